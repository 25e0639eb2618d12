"""A generator from the project's verified artifacts: what `generate`, the benchmark and the servers start from.

The ONNX graph is used only after parity passed for it, and never when anything it was
built from changed since (`pipeline.stages.fresh.stale`); eager is the checkpoint the
chain verified. Either way the tokenizer is the checkpoint's own.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from tokenizers import Tokenizer

from pipeline.artifacts import checkpoint
from pipeline.artifacts.manifest import Manifest
from pipeline.artifacts.names import ONNX, PARITY
from pipeline.errors import PipelineError
from pipeline.generation import text
from pipeline.generation.engines import ENGINES, EagerEngine, Engine, OnnxEngine
from pipeline.generation.loop import Options, Run
from pipeline.runtimes.session import SessionConfig
from pipeline.settings import Settings, resolve
from pipeline.spec import Generation, ModelSpec
from pipeline.stages.fresh import stale


@dataclass
class Generator:
    """An engine with the model's layout and tokenizer: `run(prompts, options)` starts a `Run`."""

    engine: Engine
    gen: Generation
    tokenizer: Tokenizer

    def encode(self, prompts: Sequence[str]) -> list[list[int]]:
        return text.encode(self.tokenizer, prompts, self.gen.bos_id)

    def run(self, prompts: Sequence[str], options: Options) -> Run:
        return Run(self.engine, self.gen, self.tokenizer, self.encode(prompts), options)


def generation_spec(settings: Settings, stage: str) -> ModelSpec:
    spec, _ = resolve(settings)
    if spec.generation is None:
        task = getattr(spec, "task", "")
        raise PipelineError(
            stage,
            f"{spec.name} is not a text-generation model" + (f" (its task is {task})" if task else ""),
            "generate from a decoder's checkpoint: --model hf:PATH of a *ForCausalLM folder (its default task is text-generation)",
        )
    return spec


def load(settings: Settings, engine: str = "onnxruntime", session: SessionConfig = SessionConfig(), stage: str = "generate") -> Generator:
    """The verified graph on ONNX Runtime (or the verified checkpoint on eager torch), refused if parity did not pass or it is stale."""
    if engine not in ENGINES:
        raise PipelineError(stage, f"unknown engine {engine!r}", f"use one of {', '.join(ENGINES)}")
    spec = generation_spec(settings, stage)
    gen = spec.generation
    assert gen is not None
    _, layout = resolve(settings)
    manifest = Manifest(layout.root, spec.name, settings.model)
    build = f"python -m pipeline all --model {manifest.command}"
    parity = manifest.records.get(PARITY)
    if parity is None or not parity.details.get("passed"):
        raise PipelineError(stage, f"{spec.name} has not passed parity yet", f"build and verify it first: {build} (make export MODEL=...)")
    if reason := stale(spec, manifest, PARITY):
        raise PipelineError(
            stage, f"{spec.name}'s artifacts are older than what they were built from: {reason}", f"rebuild what changed: {build}"
        )
    tokenizer = text.load(gen.tokenizer)
    if engine == "eager":
        model, _ = checkpoint.load_model(manifest, spec, stage)
        return Generator(EagerEngine(model, gen), gen, tokenizer)
    path, _ = manifest.verified(ONNX, stage)
    return Generator(OnnxEngine(path, gen, session), gen, tokenizer)
