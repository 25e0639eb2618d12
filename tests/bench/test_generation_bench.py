"""The generation benchmark on a tiny Llama exported by the stages: every engine generates exactly
the new tokens asked for, the report has tokens/s per engine, prompt length and batch, a stale
artifact is refused, and the onnxruntime-genai peer runs where its venv is (skipped where not).
No wall-clock assertion: these machines are shared and noisy."""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("transformers")

from pipeline import cli
from pipeline.artifacts.manifest import Manifest
from pipeline.bench import generation
from pipeline.errors import PipelineError
from pipeline.generation import text
from pipeline.models import load_spec
from pipeline.settings import Settings
from pipeline.stages import STAGES
from tests.generation import checkpoints
from tests.generation.checkpoints import save_decoder
from tests.helpers import REPO

NEW_TOKENS = 4
GENAI_PYTHON = REPO / ".venv-genai" / "bin" / "python"
# In process only: the served half has its own test (test_served_generation_bench.py).
TINY = [
    "--prompt-lengths",
    "5,12",
    "--new-tokens",
    str(NEW_TOKENS),
    "--batch-sizes",
    "1,3",
    "--repeats",
    "2",
    "--threads",
    "1",
    "--served",
    "off",
]


def build_genbench_llama(root: Path) -> None:
    """A tiny Llama checkpoint in root/llama through the chain (train ... package) in root: genbench_llama below."""
    from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    folder = root / "llama"
    # Heads of 16: onnxruntime-genai's GroupQueryAttention takes head sizes in multiples of 16 (the checkpoints' is 8).
    LlamaForCausalLM(LlamaConfig(**{**checkpoints.SMALL, "hidden_size": 64})).save_pretrained(folder)
    checkpoints.tokenizer().save_pretrained(folder)
    GenerationConfig(bos_token_id=checkpoints.BOS, eos_token_id=checkpoints.EOS, pad_token_id=checkpoints.PAD).save_pretrained(folder)
    settings = Settings(model=f"hf:{folder}", root=root, parity_batch_sizes=(1, 2))
    for stage in STAGES.values():
        stage(settings)


@pytest.fixture(scope="session")
def genbench_llama(builds) -> Path:
    return builds.folder("genbench_llama")  # built with the run (tests/background.py)


@pytest.fixture(scope="module")
def built(genbench_llama) -> tuple[str, Path]:
    """(model, root): the tiny Llama's project, this module's alone."""
    return f"hf:{genbench_llama / 'llama'}", genbench_llama


@pytest.fixture(scope="module")
def report(built):
    """The benchmark through the CLI, as `make bench` runs it, without the peer."""
    model, root = built
    args = ["bench", "--model", model, "--root", str(root), *TINY, "--genai-python", str(root / "no-venv" / "python")]
    assert cli.main(args) == 0
    return json.loads((root / "reports" / "llama" / "latency.json").read_text())


def test_the_report_has_tokens_per_s_per_engine_prompt_and_batch(report):
    assert report["kind"] == "generation" and report["served"] is None
    cases = {f"prompt={p},batch={b}" for p in (5, 12) for b in (1, 3)}
    for engine in ("transformers-generate", "onnxruntime"):
        assert set(report["tokens_per_s"][engine]) == cases
        assert all(v > 0 for v in report["tokens_per_s"][engine].values())
    assert report["environment"]["threads"] == 1 and report["environment"]["torch_threads"] == 1
    for r in report["results"]:
        assert r["ttft_ms_p50"] > 0 and r["itl_ms_p99"] >= r["itl_ms_p50"] > 0 and r["repeats"] == 2
    for c in report["comparisons"]:
        assert c["winner"] in ("transformers-generate", "onnxruntime")
        assert c["vs_transformers_generate"]["transformers-generate"] == 1.0


def test_every_engine_produced_exactly_the_new_tokens_asked_for(report):
    assert report["failures"] == []
    assert len(report["results"]) == 2 * 4
    assert all(r["tokens_per_row"] == [NEW_TOKENS] and r["new_tokens"] == NEW_TOKENS for r in report["results"])


def test_the_markdown_names_the_winner_and_what_was_not_measured(report, built):
    _, root = built
    md = (root / "reports" / "llama" / "latency.md").read_text()
    assert "tokens/s (higher is better)" in md and md.count("Winner: **") == 4
    assert "onnxruntime-genai: no " in md and "make genai-peer" in md
    assert "onnxruntime-int8: not made" in md  # the tiny Llama's spec declares no int8 tolerance


def test_prompts_are_real_text_of_the_exact_length(built):
    gen = load_spec(built[0]).generation
    assert gen is not None
    tokenizer = text.load(gen.tokenizer)
    rows = generation.prompt_rows(tokenizer, gen, 40, 3)
    assert rows.shape == (3, 40) and rows.max() < gen.vocab_size and len({tuple(r) for r in rows}) == 3
    assert tokenizer.decode(rows[0].tolist()).startswith("It was the best of times")


def test_sizes_past_the_model_caps_are_refused_before_any_work(built):
    model, root = built
    with pytest.raises(PipelineError, match=f"maximum length is {checkpoints.POSITIONS}"):
        generation.run(generation.GenerationSettings(model=model, root=root, prompt_lengths=(checkpoints.POSITIONS - 6,), new_tokens=8))
    with pytest.raises(PipelineError, match="the model's cap is 8"):
        generation.run(generation.GenerationSettings(model=model, root=root, batch_sizes=(9,), prompt_lengths=(4,)))


def test_a_stale_artifact_is_refused(built, tmp_path):
    model, root = built
    shutil.copytree(root / "artifacts", tmp_path / "artifacts")
    spec = load_spec(model)
    manifest = Manifest(tmp_path.resolve(), spec.name, model)
    onnx = manifest.records["onnx"]  # as if the checkpoint were rebuilt after the graph was exported
    manifest.records["onnx"] = dataclasses.replace(onnx, inputs={**onnx.inputs, "checkpoint": "0" * 64})
    manifest.save()
    settings = generation.GenerationSettings(model=model, root=tmp_path, prompt_lengths=(4,), new_tokens=2, batch_sizes=(1,))
    with pytest.raises(PipelineError, match="older than what they were built from: its onnx was made from an older checkpoint"):
        generation.run(settings)


def test_stats_follow_the_definitions():
    runs = [generation.Timed([0.5, 0.6, 0.8], [3, 3]), generation.Timed([1.0, 1.5, 2.0], [3, 3])]
    r = generation.stats("x", 10, 2, 3, runs)
    assert r["tokens_per_s"] == pytest.approx(np.median([2 * 3 / 0.8, 2 * 3 / 2.0]))
    assert r["decode_tokens_per_s"] == pytest.approx(np.median([2 * 2 / 0.3, 2 * 2 / 1.0]))
    assert r["ttft_ms_p50"] == pytest.approx(750.0)
    assert r["itl_ms_p50"] == pytest.approx(np.percentile([100, 200, 500, 500], 50))


@pytest.mark.skipif(not GENAI_PYTHON.exists(), reason="no .venv-genai: make genai-peer makes the onnxruntime-genai venv")
def test_the_genai_peer_runs_on_the_same_checkpoint(built, tmp_path):
    model, root = built
    settings = generation.GenerationSettings(
        model=model,
        root=root,
        engines=("onnxruntime", "onnxruntime-genai"),
        prompt_lengths=(6,),
        new_tokens=NEW_TOKENS,
        batch_sizes=(1, 2),
        repeats=2,
        threads=1,
        genai_python=GENAI_PYTHON,
    )
    report = generation.run(settings)
    assert report["failures"] == [] and report["skipped"] == []
    peer = [r for r in report["results"] if r["engine"] == "onnxruntime-genai"]
    assert [r["batch"] for r in peer] == [1, 2] and all(r["tokens_per_row"] == [NEW_TOKENS] for r in peer)
    assert report["environment"]["onnxruntime_genai"] and "vs_onnxruntime_genai" in report["comparisons"][0]


@pytest.mark.skipif(not GENAI_PYTHON.exists(), reason="no .venv-genai: make genai-peer makes the onnxruntime-genai venv")
def test_the_genai_builder_says_it_does_not_support_gpt2(tmp_path):
    folder = save_decoder("gpt2", tmp_path / "gpt2")
    reason = generation.build_genai(GENAI_PYTHON, folder, tmp_path / "out", "sha", timeout_s=300)
    assert reason is not None and reason.startswith("onnxruntime-genai's model builder does not support GPT2LMHeadModel")
