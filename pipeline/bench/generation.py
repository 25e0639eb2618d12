"""Generation benchmark: tokens per second, time to first token and inter-token latency of a text-generation model.

`python -m pipeline bench --model hf:FOLDER` (or `make bench`) on a `text-generation` spec
writes reports/<model>/latency.json and latency.md. For each prompt length and batch size,
every engine generates exactly the same number of new tokens per row (greedy, EOS ignored)
from the same prompts, after one untimed warm-up run; the in-process engines take turns in
shuffled order, repeat after repeat, with torch and ONNX Runtime pinned to the same threads.

- `transformers-generate`: transformers' own `model.generate` with its cache (the baseline),
  each token timed by a streamer (`BaseStreamer.put`);
- `onnxruntime`: the project's loop (`pipeline.generation.loop.Run`) over model.onnx, the cache
  kept as OrtValues by IO binding;
- `onnxruntime-int8`: the same loop over model.int8.onnx, where that variant passed its gates;
- `onnxruntime-genai`: onnxruntime-genai's own loop over the graph its model builder writes from
  the same checkpoint folder, in its own venv (`make genai-peer`) and process, where the builder
  supports the architecture (not GPT2LMHeadModel).

Then, unless `--served off`, the same archive served by TorchServe and by Ray Serve
(`pipeline.bench.served_generation`): TTFT, ITL and tokens/s at 1, 4 and 16 streams of the
OpenAI API, the served TTFT over the in-process one at one stream, and a load phase.

Definitions (one run: a batch of B prompts of L tokens, N new tokens each):
- time to first token (TTFT): from the call to the first new token being chosen (the prefill);
- inter-token latency (ITL): the gaps between consecutive tokens of a run, pooled over the repeats;
- tokens/s: B x N / (time of the Nth token - the call), prefill included; the median over the
  repeats. decode tokens/s leaves the prefill out: B x (N - 1) / (Nth token - first token).
"""

from __future__ import annotations

import datetime
import gc
import json
import subprocess
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np
import psutil
from tqdm import tqdm

from pipeline.artifacts import files
from pipeline.artifacts.environment import fingerprint
from pipeline.artifacts.manifest import Manifest
from pipeline.artifacts.names import CHECKPOINT, ONNX
from pipeline.bench.latency import gated_variants, require_current
from pipeline.errors import PipelineError
from pipeline.settings import DEFAULT_MODEL, Layout, Settings, resolve
from pipeline.spec import Generation, ModelSpec

if TYPE_CHECKING:
    from pipeline.bench.served_generation import ServedSettings

STAGE = "bench"
SCHEMA = 1
BASELINE = "transformers-generate"
ENGINES = (BASELINE, "onnxruntime", "onnxruntime-int8", "onnxruntime-genai")
DESCRIPTION = {
    BASELINE: "transformers' model.generate with its own cache (DynamicCache), greedy, tokens timed by a BaseStreamer",
    "onnxruntime": "the project's loop (pipeline.generation.loop.Run) over model.onnx on ONNX Runtime, cache bound by IO binding",
    "onnxruntime-int8": "the same loop over model.int8.onnx (the gated int8 variant)",
    "onnxruntime-genai": "onnxruntime-genai's own loop over the graph its model builder writes (fp32, cpu), in its own venv and process",
}
GENAI_DIR = "genai-fp32-cpu"
# Real text for the prompts: tokenized, then cut or repeated to the length asked for.
TEXT = (
    "It was the best of times, it was the worst of times, it was the age of wisdom, it was the age of "
    "foolishness, it was the epoch of belief, it was the epoch of incredulity, it was the season of Light, "
    "it was the season of Darkness, it was the spring of hope, it was the winter of despair, we had "
    "everything before us, we had nothing before us, we were all going direct to Heaven, we were all going "
    "direct the other way. A model is exported once and measured many times: the prompt is read in one "
    "pass, then every new token is one step through the graph with the keys and values kept from before."
)


@dataclass(frozen=True)
class GenerationSettings:
    """What to measure; recorded in the report."""

    model: str = DEFAULT_MODEL
    root: Path = Path(".")
    engines: tuple[str, ...] = ENGINES
    prompt_lengths: tuple[int, ...] = (32, 512)
    new_tokens: int = 64
    batch_sizes: tuple[int, ...] = (1, 8)
    repeats: int = 3
    # Intra-op threads for torch, ONNX Runtime and onnxruntime-genai alike: the physical cores.
    threads: int = psutil.cpu_count(logical=False) or 1
    # The peer's interpreter (make genai-peer makes it); a relative path is from the working folder.
    genai_python: Path = Path(".venv-genai/bin/python")
    # Seconds the peer's model builder and its timing process may each take.
    genai_timeout_s: float = 1800.0
    # The served benchmark (the CLI's default runs it); None: in process only.
    served: ServedSettings | None = None


@dataclass
class Timed:
    """One run: seconds from the call to each chosen token, and the new tokens each row got."""

    token_times: list[float]
    tokens_per_row: list[int]


class Generate(Protocol):
    """One engine reduced to `engine(rows, new_tokens) -> Timed`: rows [batch, prompt] of token ids."""

    name: str

    def __call__(self, rows: np.ndarray, new_tokens: int) -> Timed: ...


class HfGenerate:
    """transformers' own generate (the eager model with its cache): the baseline users start from."""

    name = BASELINE

    def __init__(self, model, gen: Generation):
        import copy

        self.model, self.gen = model, gen
        self.config = copy.deepcopy(model.generation_config)

    def __call__(self, rows: np.ndarray, new_tokens: int) -> Timed:
        import torch
        from transformers.generation.streamers import BaseStreamer

        class Clock(BaseStreamer):
            """perf_counter at each put() after the first (the prompt): when each step's tokens were chosen."""

            def __init__(self):
                self.times: list[float] = []
                self.prompt_seen = False

            def put(self, value):
                if self.prompt_seen:
                    self.times.append(time.perf_counter())
                self.prompt_seen = True

            def end(self):
                pass

        clock = Clock()
        config = self.config
        config.update(max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False, num_beams=1, pad_token_id=self.gen.pad_id)
        ids = torch.from_numpy(rows)
        start = time.perf_counter()
        with torch.inference_mode():
            out = self.model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), generation_config=config, streamer=clock)
        new = out.shape[1] - rows.shape[1]
        return Timed([t - start for t in clock.times], [new] * rows.shape[0])


class LoopGenerate:
    """The project's generation loop over an ONNX Runtime engine."""

    def __init__(self, name: str, engine, gen: Generation, tokenizer):
        self.name, self.engine, self.gen, self.tokenizer = name, engine, gen, tokenizer

    def __call__(self, rows: np.ndarray, new_tokens: int) -> Timed:
        from pipeline.generation.loop import Options, Run

        start = time.perf_counter()
        run = Run(self.engine, self.gen, self.tokenizer, rows.tolist(), Options(max_new_tokens=new_tokens, ignore_eos=True))
        done = run.finish()
        return Timed([t - start for t in run.token_times], [len(c.tokens) for c in done])


def prompt_rows(tokenizer, gen: Generation, length: int, batch: int) -> np.ndarray:
    """`batch` prompts of exactly `length` ids: TEXT tokenized (BOS kept first where the tokenizer adds it), then
    cycled to the length from a different offset per row, so no row repeats another."""
    from pipeline.generation import text

    ids = text.encode(tokenizer, [TEXT], gen.bos_id)[0]
    head = ids[:1] if gen.bos_id is not None and ids[0] == gen.bos_id else []
    body = np.asarray(ids[len(head) :], dtype=np.int64)
    rows = []
    for row in range(batch):
        cycled = np.resize(np.roll(body, -7 * row), max(length - len(head), 0))
        rows.append(np.concatenate([np.asarray(head, dtype=np.int64), cycled])[:length])
    return np.stack(rows).astype(np.int64)


def stats(engine: str, prompt: int, batch: int, new_tokens: int, runs: Sequence[Timed]) -> dict:
    """One flat record: the figures of one engine at one prompt length and batch, over its repeats."""
    times = [np.asarray(r.token_times) for r in runs]
    per_run = [batch * new_tokens / t[-1] for t in times]
    decode = [batch * (new_tokens - 1) / (t[-1] - t[0]) for t in times if new_tokens > 1 and t[-1] > t[0]]
    gaps_ms = np.concatenate([np.diff(t) for t in times]) * 1e3
    ttft_ms = np.asarray([t[0] for t in times]) * 1e3
    return {
        "engine": engine,
        "prompt_tokens": prompt,
        "batch": batch,
        "new_tokens": new_tokens,
        "repeats": len(runs),
        "tokens_per_row": sorted({n for r in runs for n in r.tokens_per_row}),
        "tokens_per_s": float(np.median(per_run)),
        "tokens_per_s_runs": [float(v) for v in per_run],
        "decode_tokens_per_s": float(np.median(decode)) if decode else None,
        "ttft_ms_p50": float(np.percentile(ttft_ms, 50)),
        "itl_ms_p50": float(np.percentile(gaps_ms, 50)) if gaps_ms.size else None,
        "itl_ms_p99": float(np.percentile(gaps_ms, 99)) if gaps_ms.size else None,
        "total_s_p50": float(np.median([t[-1] for t in times])),
    }


def fixed_length(engine: str, runs: Sequence[Timed], new_tokens: int) -> None:
    """Every row of every run got exactly the new tokens asked for, or the engine's figures are not comparable."""
    got = sorted({n for r in runs for n in r.tokens_per_row} | {len(r.token_times) for r in runs})
    if got != [new_tokens]:
        raise PipelineError(STAGE, f"{engine} produced {got} new tokens per row or step, not {new_tokens}", "its figures are left out")


@dataclass
class Measured:
    """The benchmark's findings: one record per engine, prompt length and batch; what was left out and why."""

    results: list[dict] = field(default_factory=list)
    skipped: list[dict] = field(default_factory=list)
    failures: list[dict] = field(default_factory=list)
    versions: dict[str, Any] = field(default_factory=dict)


def check(settings: GenerationSettings, spec: ModelSpec, manifest: Manifest) -> Generation:
    """Refuse what cannot be measured, before any work: unknown engines, missing or stale artifacts, sizes past the caps."""
    gen = spec.generation
    if gen is None:
        raise PipelineError(STAGE, f"{spec.name} is not a text-generation model", "use python -m pipeline bench's logits benchmark for it")
    unknown = [e for e in settings.engines if e not in ENGINES]
    if unknown:
        raise PipelineError(STAGE, f"unknown generation engine(s) {unknown}", f"choose from {', '.join(ENGINES)}")
    require_current(spec, manifest, settings.model, (CHECKPOINT, ONNX))
    _check_sizes(settings, gen)
    return gen


def _check_sizes(settings: GenerationSettings, gen: Generation) -> None:
    if settings.repeats < 1 or settings.threads < 1 or min(settings.prompt_lengths) < 1 or min(settings.batch_sizes) < 1:
        raise PipelineError(
            STAGE, "repeats, threads, prompt lengths and batch sizes must be positive", "e.g. --prompt-lengths 32 --repeats 3"
        )
    if not 1 <= settings.new_tokens <= gen.max_new_tokens:
        raise PipelineError(
            STAGE, f"--new-tokens {settings.new_tokens}, the model's cap is {gen.max_new_tokens}", f"use 1 to {gen.max_new_tokens}"
        )
    if max(settings.batch_sizes) > gen.max_batch:
        raise PipelineError(
            STAGE, f"batch {max(settings.batch_sizes)}, the model's cap is {gen.max_batch}", f"use batch sizes up to {gen.max_batch}"
        )
    longest = max(settings.prompt_lengths) + settings.new_tokens
    if longest > gen.max_length:
        raise PipelineError(
            STAGE,
            f"a prompt of {max(settings.prompt_lengths)} tokens plus {settings.new_tokens} new ones is {longest} positions, "
            f"the model's maximum length is {gen.max_length}",
            "use shorter --prompt-lengths or fewer --new-tokens",
        )


def int8_reason(spec: ModelSpec, manifest: Manifest) -> str | None:
    """Why the int8 variant is not benched (None: it passed its gates and is)."""
    from pipeline.stages.variants import tolerance_of

    if "int8" in gated_variants(manifest):
        return None
    if "int8" in manifest.records:
        return "model.int8.onnx was made but did not pass its gates for the current model (see reports/<model>/variant-int8.md)"
    try:
        tolerance_of(spec, "int8")
    except PipelineError as exc:
        return f"not made: `python -m pipeline variants --int8` refuses it ({exc.problem})"
    return f"not made: run python -m pipeline variants --model {manifest.command} --int8 (make export VARIANTS=int8)"


def in_process_engines(settings: GenerationSettings, spec: ModelSpec, layout: Layout, manifest: Manifest, out: Measured) -> list[Generate]:
    """The engines that run in this process, loaded from verified files; the others go to `out.skipped`."""
    import torch

    from pipeline.artifacts import checkpoint
    from pipeline.generation import text
    from pipeline.generation.engines import OnnxEngine
    from pipeline.runtimes.session import SessionConfig

    assert spec.generation is not None
    gen = spec.generation
    tokenizer = text.load(gen.tokenizer)
    session = SessionConfig(device="cpu", threads=settings.threads)
    torch.set_num_threads(settings.threads)
    engines: list[Generate] = []
    if BASELINE in settings.engines:
        module, _ = checkpoint.load_model(manifest, spec, STAGE)
        model: Any = module.model  # the transformers model inside the CachedDecoder the stages verified
        engines.append(HfGenerate(model, gen))
        out.versions["attn_implementation"] = getattr(model.config, "_attn_implementation", None)
    if "onnxruntime" in settings.engines:
        engines.append(LoopGenerate("onnxruntime", OnnxEngine(manifest.verified(ONNX, STAGE)[0], gen, session), gen, tokenizer))
    if "onnxruntime-int8" in settings.engines:
        reason = int8_reason(spec, manifest)
        if reason:
            out.skipped.append({"engine": "onnxruntime-int8", "reason": reason})
        else:
            path = manifest.verified("int8", STAGE)[0]
            engines.append(LoopGenerate("onnxruntime-int8", OnnxEngine(path, gen, session), gen, tokenizer))
    return engines


def time_case(engines: Sequence[Generate], rows: np.ndarray, settings: GenerationSettings, out: Measured, bar: tqdm) -> None:
    """Warm up each engine, then time them in turns (a shuffled order per repeat); a record per engine that kept the fixed length."""
    live: dict[str, Generate] = {}
    for engine in engines:
        bar.set_postfix_str(f"prompt {rows.shape[1]} b={rows.shape[0]} warm up {engine.name}")
        try:
            engine(rows, settings.new_tokens)  # warm-up: the session's first shapes, torch's first kernels
            live[engine.name] = engine
        except Exception as exc:
            out.failures.append(_failure(engine.name, rows, exc))
        bar.update(1)
    runs: dict[str, list[Timed]] = {name: [] for name in live}
    order = np.random.default_rng(rows.shape[0] * 1000 + rows.shape[1])
    for _ in range(settings.repeats):
        for name in order.permutation(sorted(live)):
            gc.collect()
            gc.disable()  # a collection inside one run is noise, not the engine
            try:
                runs[name].append(live[name](rows, settings.new_tokens))
            finally:
                gc.enable()
            bar.update(1)
    for name, timed in runs.items():
        _record(name, rows, timed, settings, out)


def _record(name: str, rows: np.ndarray, runs: Sequence[Timed], settings: GenerationSettings, out: Measured) -> None:
    try:
        fixed_length(name, runs, settings.new_tokens)
    except PipelineError as exc:
        out.failures.append(_failure(name, rows, exc))
        return
    out.results.append(stats(name, rows.shape[1], rows.shape[0], settings.new_tokens, runs))


def _failure(engine: str, rows: np.ndarray, exc: BaseException) -> dict:
    text = " ".join(str(exc).strip().splitlines()[:3])[:400]
    return {"engine": engine, "prompt_tokens": int(rows.shape[1]), "batch": int(rows.shape[0]), "error": f"{type(exc).__name__}: {text}"}


def genai_python(settings: GenerationSettings) -> Path | None:
    path = settings.genai_python
    return path if path.exists() else None


def build_genai(python: Path, source: Path, out_dir: Path, made_from: str, timeout_s: float) -> str | None:
    """onnxruntime-genai's model builder on the checkpoint folder (fp32, cpu), once per checkpoint; why not, where it cannot."""
    stamp = out_dir / "built_from.json"
    if stamp.exists() and json.loads(stamp.read_text()).get("checkpoint_sha256") == made_from:
        return None
    with tempfile.TemporaryDirectory(prefix="genai-cache-") as cache:
        command = [str(python), "-m", "onnxruntime_genai.models.builder", "-i", str(source), "-o", str(out_dir)]
        proc = subprocess.run([*command, "-p", "fp32", "-e", "cpu", "-c", cache], capture_output=True, text=True, timeout=timeout_s)
    if proc.returncode != 0:
        unsupported = [line for line in proc.stderr.splitlines() if "is not currently supported" in line]
        if unsupported:
            architecture = _architecture(source)
            return f"onnxruntime-genai's model builder does not support {architecture}: {unsupported[-1].strip()}"
        lines = proc.stderr.strip().splitlines()
        raise PipelineError(
            STAGE,
            f"onnxruntime-genai's model builder failed: {lines[-1] if lines else proc.returncode}",
            f"run it by hand: {' '.join(command)}",
        )
    files.write_json(stamp, {"checkpoint_sha256": made_from, "command": command})
    return None


def _architecture(source: Path) -> str:
    try:
        return ", ".join(json.loads((source / "config.json").read_text()).get("architectures", [])) or "this architecture"
    except (OSError, json.JSONDecodeError):
        return "this architecture"


def genai_peer(
    settings: GenerationSettings, spec: ModelSpec, layout: Layout, manifest: Manifest, cases: list[np.ndarray], out: Measured
) -> None:
    """Build the peer's graph and time its loop in its own venv and process; a line in `out.skipped` where it cannot run."""
    python = genai_python(settings)
    if python is None:
        out.skipped.append({"engine": "onnxruntime-genai", "reason": f"no {settings.genai_python}: make genai-peer makes its venv"})
        return
    if spec.source is None or not (spec.source / "config.json").exists():
        out.skipped.append({"engine": "onnxruntime-genai", "reason": "its model builder reads a checkpoint folder (--model hf:FOLDER)"})
        return
    model_dir = layout.artifacts / GENAI_DIR
    reason = build_genai(python, spec.source, model_dir, manifest.records[CHECKPOINT].sha256, settings.genai_timeout_s)
    if reason:
        out.skipped.append({"engine": "onnxruntime-genai", "reason": reason})
        return
    with tempfile.TemporaryDirectory(prefix="genai-job-") as tmp:
        job = Path(tmp) / "job.json"
        job.write_text(
            json.dumps(
                {
                    "model_dir": str(model_dir),
                    "threads": settings.threads,
                    "new_tokens": settings.new_tokens,
                    "repeats": settings.repeats,
                    "cases": [{"rows": rows.tolist()} for rows in cases],
                }
            )
        )
        worker = Path(__file__).with_name("genai_worker.py")
        proc = subprocess.run([str(python), str(worker), str(job)], capture_output=True, text=True, timeout=settings.genai_timeout_s)
    if proc.returncode != 0:
        lines = proc.stderr.strip().splitlines()
        out.failures.append({"engine": "onnxruntime-genai", "error": lines[-1] if lines else f"exit {proc.returncode}"})
        return
    answer = json.loads(proc.stdout.strip().splitlines()[-1])
    out.versions.update(answer["versions"])
    for rows, case in zip(cases, answer["cases"]):
        _record("onnxruntime-genai", rows, [Timed(**r) for r in case["runs"]], settings, out)


def comparisons(results: list[dict]) -> list[dict]:
    """Per prompt length and batch: the winner by tokens/s, and each engine's ratio to the baseline and to the peer."""
    out = []
    for prompt, batch in sorted({(r["prompt_tokens"], r["batch"]) for r in results}):
        here = {r["engine"]: r for r in results if (r["prompt_tokens"], r["batch"]) == (prompt, batch)}
        ranked = sorted(here.values(), key=lambda r: -r["tokens_per_s"])
        base, peer = here.get(BASELINE), here.get("onnxruntime-genai")
        out.append(
            {
                "prompt_tokens": prompt,
                "batch": batch,
                "winner": ranked[0]["engine"],
                "winner_by": ranked[0]["tokens_per_s"] / ranked[1]["tokens_per_s"] if len(ranked) > 1 else None,
                "vs_transformers_generate": {e: r["tokens_per_s"] / base["tokens_per_s"] for e, r in here.items()} if base else {},
                "vs_onnxruntime_genai": {e: r["tokens_per_s"] / peer["tokens_per_s"] for e, r in here.items()} if peer else {},
            }
        )
    return out


def tokens_per_s(results: list[dict]) -> dict[str, dict[str, float]]:
    """{engine: {"prompt=32,batch=1": tokens/s}}: the headline figure at a glance."""
    out: dict[str, dict[str, float]] = {}
    for r in results:
        out.setdefault(r["engine"], {})[f"prompt={r['prompt_tokens']},batch={r['batch']}"] = r["tokens_per_s"]
    return out


def environment(settings: GenerationSettings, versions: dict) -> dict:
    import torch

    env = dict(fingerprint())
    env.update(
        {
            "physical_cores": psutil.cpu_count(logical=False),
            "logical_cores": psutil.cpu_count(logical=True),
            "threads": settings.threads,  # torch.set_num_threads, SessionConfig(threads=...), genai's intra_op_num_threads
            "torch_threads": torch.get_num_threads(),
            "memory_gib": round(psutil.virtual_memory().total / 2**30, 1),
            **versions,
        }
    )
    return env


def run(settings: GenerationSettings) -> dict:
    """Measure every engine at every prompt length and batch size; write latency.json and latency.md."""
    spec, layout = resolve(Settings(model=settings.model, root=settings.root))
    manifest = Manifest(layout.root, spec.name, settings.model)
    gen = check(settings, spec, manifest)
    if settings.served is not None:
        from pipeline.bench import served_generation

        served_generation.check(settings.served, gen)
    started = time.perf_counter()
    out = Measured()
    engines = in_process_engines(settings, spec, layout, manifest, out)
    from pipeline.generation import text

    tokenizer = text.load(gen.tokenizer)
    cases = [prompt_rows(tokenizer, gen, length, batch) for length in settings.prompt_lengths for batch in settings.batch_sizes]
    with tqdm(total=len(cases) * len(engines) * (settings.repeats + 1), desc=f"bench {spec.name}", unit="run", disable=None) as bar:
        for rows in cases:
            time_case(engines, rows, settings, out, bar)
    if "onnxruntime-genai" in settings.engines:
        genai_peer(settings, spec, layout, manifest, cases, out)
    del engines  # the in-process models, before the servers load theirs
    gc.collect()
    served = serve_and_measure(settings, gen, manifest)
    report = {
        "schema": SCHEMA,
        "kind": "generation",
        "model": spec.name,
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "seconds": time.perf_counter() - started,
        "settings": {**asdict(settings), "root": str(settings.root), "genai_python": str(settings.genai_python)},
        "environment": environment(settings, out.versions),
        "definitions": DEFINITIONS,
        "engines": {e: DESCRIPTION[e] for e in settings.engines},
        "onnx_sha256": manifest.records[ONNX].sha256,
        "tokens_per_s": tokens_per_s(out.results),
        "results": out.results,
        "comparisons": comparisons(out.results),
        "skipped": out.skipped,
        "failures": out.failures,
        "served": served,
    }
    files.write_json(layout.reports / "latency.json", report)
    files.write_text(layout.reports / "latency.md", markdown(report))
    return report


def serve_and_measure(settings: GenerationSettings, gen: Generation, manifest: Manifest) -> dict | None:
    """The served benchmark on the same verified archive, where asked for."""
    if settings.served is None:
        return None
    from pipeline.bench import served_generation

    onnx = manifest.verified(ONNX, STAGE)[0]
    return served_generation.run(settings.served, Settings(model=settings.model, root=settings.root), gen, onnx)


DEFINITIONS = {
    "fixed_length": "every engine generates exactly new_tokens per row (greedy, EOS ignored) from the same prompts of exactly prompt_tokens ids",
    "tokens_per_s": "batch x new_tokens / (time of the last new token - the call), prefill included; the median over the repeats",
    "decode_tokens_per_s": "batch x (new_tokens - 1) / (last new token - first new token): the decode steps alone",
    "ttft_ms_p50": "from the call to the first new token being chosen (the prefill), median over the repeats",
    "itl_ms": "the gaps between consecutive new tokens of a run, pooled over the repeats; p50 and p99 by numpy.percentile",
}


def number_or_dash(v: float | None, digits: int = 1) -> str:
    """A figure to `digits` decimals, or a dash where there is none."""
    return "—" if v is None else f"{v:.{digits}f}"


def _case_lines(report: dict, comparison: dict) -> list[str]:
    prompt, batch = comparison["prompt_tokens"], comparison["batch"]
    rows = sorted((r for r in report["results"] if (r["prompt_tokens"], r["batch"]) == (prompt, batch)), key=lambda r: -r["tokens_per_s"])
    by = comparison["winner_by"]
    num = number_or_dash
    lines = [
        f"### Prompt {prompt} tokens, batch {batch}",
        "",
        f"Winner: **{comparison['winner']}**" + (f", {by:.2f}× the tokens/s of the next engine" if by else ""),
        "",
        "| engine | tokens/s (higher is better) | vs transformers generate | vs onnxruntime-genai | decode tokens/s | TTFT p50 ms | ITL p50 ms | ITL p99 ms |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in rows:
        base = comparison["vs_transformers_generate"].get(r["engine"])
        peer = comparison["vs_onnxruntime_genai"].get(r["engine"])
        lines.append(
            f"| {r['engine']} | {r['tokens_per_s']:.1f} | {num(base, 2)}{'×' if base else ''} | {num(peer, 2)}{'×' if peer else ''} | "
            f"{num(r['decode_tokens_per_s'])} | {num(r['ttft_ms_p50'])} | {num(r['itl_ms_p50'], 2)} | {num(r['itl_ms_p99'], 2)} |"
        )
    return [*lines, ""]


def markdown(report: dict) -> str:
    s, env = report["settings"], report["environment"]
    lines = [
        f"# Generation latency: {report['model']}",
        "",
        f"Measured {report['created']} in {report['seconds']:.0f} s by `python -m pipeline bench`. Every engine generated exactly "
        f"{s['new_tokens']} new tokens per row (greedy, EOS ignored) from the same prompts, after one untimed warm-up run, "
        f"{s['repeats']} timed runs each; the in-process engines took turns in a shuffled order, onnxruntime-genai ran in its own process.",
        "",
        f"- tokens/s (higher is better): {DEFINITIONS['tokens_per_s']}; decode tokens/s: {DEFINITIONS['decode_tokens_per_s']}.",
        f"- TTFT: {DEFINITIONS['ttft_ms_p50']}. ITL: {DEFINITIONS['itl_ms']}.",
        "- Ratios are tokens/s over the named engine's, both measured in this run.",
        f"- CPU: {env['cpu']}, {env['physical_cores']} physical / {env['logical_cores']} logical cores; {env['threads']} threads for torch, "
        "ONNX Runtime and onnxruntime-genai alike",
        f"- torch {env['torch']} (attention {env.get('attn_implementation', '—')}), onnxruntime {env['onnxruntime']}"
        + (
            f", onnxruntime-genai {env['onnxruntime_genai']} (its own onnxruntime {env.get('onnxruntime_genai_onnxruntime')})"
            if "onnxruntime_genai" in env
            else ""
        ),
        "",
    ]
    for comparison in report["comparisons"]:
        lines += _case_lines(report, comparison)
    if report["skipped"] or report["failures"]:
        lines += ["## Not measured", ""]
        lines += [f"- {s['engine']}: {s['reason']}" for s in report["skipped"]]
        lines += [f"- {f['engine']} failed{_where(f)}: {f['error']}" for f in report["failures"]]
        lines.append("")
    if report.get("served"):
        from pipeline.bench import served_generation

        lines += served_generation.markdown(report["served"], machine(env))
    return "\n".join(lines)


def machine(env: dict) -> str:
    """The machine in words: its CPU, and a GPU only where one was present."""
    cpu = f"this machine's CPU ({env['cpu']}, {env['physical_cores']} physical / {env['logical_cores']} logical cores)"
    return cpu + (f", with a GPU present ({env['gpu']})" if env.get("cuda_available") else ", no GPU")


def _where(failure: dict) -> str:
    return f" at prompt {failure['prompt_tokens']}, batch {failure['batch']}" if "batch" in failure else ""


def console_summary(report: dict) -> str:
    lines = [f"{report['model']}: tokens/s (higher is better), {report['settings']['new_tokens']} new tokens per row"]
    for c in report["comparisons"]:
        ratio = c["vs_transformers_generate"].get("onnxruntime")
        here = [r for r in report["results"] if (r["prompt_tokens"], r["batch"]) == (c["prompt_tokens"], c["batch"])]
        figures = ", ".join(f"{r['engine']} {r['tokens_per_s']:.1f}" for r in sorted(here, key=lambda r: -r["tokens_per_s"]))
        lines.append(
            f"  prompt {c['prompt_tokens']}, batch {c['batch']}: winner {c['winner']}; {figures}"
            + (f"; onnxruntime {ratio:.2f}x transformers generate" if ratio else "")
        )
    lines += [f"  not measured: {s['engine']}: {s['reason']}" for s in report["skipped"]]
    if report.get("served"):
        from pipeline.bench import served_generation

        lines += served_generation.console_lines(report["served"])
    lines.append(f"  reports/{report['model']}/latency.json, latency.md")
    return "\n".join(lines)
