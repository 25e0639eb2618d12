"""Decoders of transformers' classes (Llama, Qwen2, Mistral, GPT-2) at small configs through the
chain as text-generation models, then `generate` from what it built."""

from __future__ import annotations

import json
import zipfile

import numpy as np
import pytest

from pipeline import cli
from pipeline.artifacts.manifest import Manifest
from pipeline.errors import PipelineError
from pipeline.generation import load, text, verify
from pipeline.generation.engines import EagerEngine, OnnxEngine
from pipeline.models import load_spec
from pipeline.runtimes.runners import cuda_available
from pipeline.runtimes.session import SessionConfig
from pipeline.settings import Layout, Settings
from pipeline.spec import Tolerance
from tests.generation.checkpoints import DECODERS, PAD, POSITIONS, save_decoder, transformers_greedy
from tests.helpers import copy_root

PROMPTS = ["Hello world!", "The quick brown fox jumps over the lazy dog. She sells"]


@pytest.mark.slow
@pytest.mark.parametrize("kind", sorted(DECODERS))
def test_a_decoder_exports_with_its_cache_and_generates_as_transformers_does(small_llama, cache_decoders, kind):
    # The session's small Llama is this chain for llama; the others are built once too (tests/background.py).
    folder, project = small_llama if kind == "llama" else (cache_decoders / kind, cache_decoders / f"{kind}-project")
    manifest = Manifest(project.resolve(), kind)
    assert "text-generation model" in manifest.records["torchscript"].not_made
    onnx = manifest.records["onnx"].details
    assert "torch.export-based" in onnx["exporter"]
    # Symbolic: the past's length in, past + new tokens out (the exporter names that axis itself).
    assert onnx["dims"]["past_key_values.0.key"][2] == "past" and isinstance(onnx["dims"]["present.1.value"][2], str)
    report = json.loads((Layout(project.resolve(), kind).reports / "parity.json").read_text())
    assert report["passed"]
    steps = [r for r in report["results"] if r["case"].startswith("generation")]
    assert {r["case"].split(" prefill")[0].split(" decode")[0] for r in steps} == set(
        verify.cases(text.load(folder / "tokenizer.json"), load_spec(f"hf:{folder}").generation, verify.GREEDY_TOKENS)
    )
    assert sum("decode step 8" in r["case"] for r in steps) == 2 and all(r["passed"] for r in steps)
    # Token for token at batch 1 and in the left-padded batch of three prompts of different lengths.
    assert [g["same"] for g in report["greedy"]] == [True] * 4
    assert any("left-padded" in g["case"] for g in report["greedy"])


@pytest.mark.slow
def test_the_archive_carries_the_cache_layout_and_the_tokenizer(small_llama):
    folder, root = small_llama
    with zipfile.ZipFile(root / "model_store" / "llama.mar") as zf:
        contract = json.loads(zf.read("io_contract.json"))
        assert zf.read("tokenizer.json") == (folder / "tokenizer.json").read_bytes()
    gen = contract["generation"]
    assert (gen["layers"], gen["kv_heads"], gen["head_size"], gen["dtype"]) == (2, 2, 8, "float32")
    assert (gen["eos_ids"], gen["pad_id"], gen["bos_id"], gen["max_length"]) == ([1], PAD, 0, POSITIONS)
    assert gen["past"][:2] == ["past_key_values.0.key", "past_key_values.0.value"] and gen["present"][-1] == "present.1.value"
    assert [t["name"] for t in contract["outputs"]][:2] == ["logits", "present.0.key"]


@pytest.mark.slow
@pytest.mark.parametrize("engine", ["onnxruntime", "eager"])
def test_generate_prints_the_tokens_transformers_picks(small_llama, capsys, engine):
    folder, root = small_llama
    args = ["generate", "--model", f"hf:{folder}", "--root", str(root), "--max-new-tokens", "24", "--json", "--engine", engine]
    assert cli.main(args + [a for p in PROMPTS for a in ("--prompt", p)]) == 0
    answers = json.loads(capsys.readouterr().out)
    assert [a["tokens"] for a in answers] == transformers_greedy(folder, PROMPTS, 24)
    tok = text.load(folder / "tokenizer.json")
    assert [a["text"] for a in answers] == [tok.decode([t for t in a["tokens"] if t != 1]) for a in answers]
    assert len({tuple(a["tokens"]) for a in answers}) == 2  # not one repeated answer


@pytest.mark.slow
def test_sampling_is_seeded_and_one_prompt_streams(small_llama, capsys):
    folder, root = small_llama
    base = ["generate", "--model", f"hf:{folder}", "--root", str(root), "--prompt", "Hello", "--max-new-tokens", "16"]
    sampled = [*base, "--temperature", "0.8", "--top-p", "0.9", "--seed", "3", "--json"]
    assert cli.main(sampled) == 0
    first = json.loads(capsys.readouterr().out)
    assert cli.main(sampled) == 0
    assert json.loads(capsys.readouterr().out) == first
    assert first[0]["tokens"] != transformers_greedy(folder, ["Hello"], 16)[0]
    assert cli.main(base) == 0
    assert capsys.readouterr().out.startswith("Hello")


@pytest.mark.slow
def test_generate_refuses_a_graph_older_than_its_checkpoint(small_llama, tmp_path, capsys):
    folder, root = small_llama
    moved = save_decoder("llama", tmp_path / "llama", seed=1)  # the same name, other weights, not rebuilt
    project = copy_root(root, tmp_path / "project")
    assert cli.main(["generate", "--model", f"hf:{moved}", "--root", str(project), "--prompt", "Hi"]) == 1
    err = capsys.readouterr().err
    assert "older than what they were built from" in err and "python -m pipeline all --model" in err


def test_generate_refuses_a_model_that_does_not_generate(tmp_path):
    with pytest.raises(PipelineError, match="simple_nn is not a text-generation model"):
        load.load(Settings(model="simple_nn", root=tmp_path))


@pytest.mark.slow
def test_greedy_parity_names_where_tokens_part_and_whether_it_is_a_near_tie(small_llama):
    folder, root = small_llama
    spec = load_spec(f"hf:{folder}")
    gen = spec.generation
    generator = load.load(Settings(model=f"hf:{folder}", root=root))
    tok = generator.tokenizer

    class Swapped:
        """The graph, but at the fourth new token the second-best token wins."""

        name = "swapped"

        def __init__(self, engine):
            self.engine, self.calls = engine, 0

        def step(self, *args):
            logits, cache = self.engine.step(*args)
            self.calls += 1
            if self.calls == 4:
                second = np.argsort(logits, axis=-1)[:, -2]
                logits[np.arange(len(logits)), second] = logits.max() + 1
            return logits, cache

    rows = text.encode(tok, PROMPTS[:1])
    eager = load.load(Settings(model=f"hf:{folder}", root=root), "eager").engine
    assert isinstance(eager, EagerEngine)
    ref = verify.reference(eager.module, gen, rows, "swap")
    tight = verify.greedy_rows(Swapped(generator.engine), gen, tok, ref, Tolerance())
    assert not tight[0].same and tight[0].parted_at == 3 and not tight[0].near_tie and not tight[0].passed
    loose = verify.greedy_rows(Swapped(generator.engine), gen, tok, ref, Tolerance(atol=100.0))
    assert loose[0].near_tie and loose[0].passed and loose[0].margin == tight[0].margin


@pytest.mark.slow
def test_the_cuda_engine_is_refused_without_cuda_and_matches_the_cpu_with_it(small_llama):
    folder, root = small_llama
    spec = load_spec(f"hf:{folder}")
    path = root / "artifacts" / spec.name / "model.onnx"
    if not cuda_available():
        # No silent fall back to the CPU: the session refuses, whichever way CUDA is missing.
        with pytest.raises(PipelineError, match="CUDA"):
            OnnxEngine(path, spec.generation, SessionConfig("cuda"))
        pytest.skip("no CUDA provider here: the cache-on-device path is unverified until a GPU runs this test")
    settings = Settings(model=f"hf:{folder}", root=root)
    cpu = load.load(settings).run(PROMPTS, load.Options(max_new_tokens=16)).finish()
    gpu = load.load(settings, session=SessionConfig("cuda")).run(PROMPTS, load.Options(max_new_tokens=16)).finish()
    assert [c.tokens for c in gpu] == [c.tokens for c in cpu]


BUILTIN_TINY = """from transformers import GPT2Config

from pipeline.models.gpt2 import make_generation_spec

SPEC = make_generation_spec(GPT2Config(n_embd=32, n_layer=2, n_head=4, vocab_size=300, n_positions=64, eos_token_id=299), name="gpt2_gen_tiny")
"""


@pytest.mark.slow
def test_the_builtin_gpt2_generates_with_gpt2s_byte_alphabet(tmp_path, capsys):
    """The built-in gpt2's own spec at a tiny config: no checkpoint folder, GPT-2's byte ids, EOS at the last id."""
    model = tmp_path / "gpt2_gen_tiny.py"
    model.write_text(BUILTIN_TINY)
    root = tmp_path / "project"
    assert cli.main(["all", "--model", str(model), "--root", str(root), "--parity-batch-sizes", "1,2"]) == 0
    report = json.loads((root / "reports" / "gpt2_gen_tiny" / "parity.json").read_text())
    assert report["passed"] and [g["same"] for g in report["greedy"]] == [True] * 4
    tok = text.load(load_spec(str(model)).generation.tokenizer)
    assert tok.encode("Hello world").ids == [39, 68, 75, 75, 78, 220, 86, 78, 81, 75, 67]  # GPT-2's own ids for these bytes
    capsys.readouterr()
    assert cli.main(["generate", "--model", str(model), "--root", str(root), "--prompt", "Hello", "--max-new-tokens", "8", "--json"]) == 0
    [answer] = json.loads(capsys.readouterr().out)
    assert 1 <= len(answer["tokens"]) <= 8 and all(0 <= t < 300 for t in answer["tokens"])
