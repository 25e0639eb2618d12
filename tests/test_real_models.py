"""The real-model built-ins: full-size specs declared right, tiny configs of the same classes through the chain.

The full-size models (resnet50, vit_b16, bert_base, gpt2) are only loaded as specs here,
never built: `make real-models` takes them through the chain. Each family's tiny config
is a user-style model file written into a temporary folder (as docs/real-models.md
shows), so the chain tests exercise `make_spec`, the config in model_args and the
rebuild from the checkpoint exactly as the full-size ones do.
"""

from __future__ import annotations

import importlib.util
import json
import re
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import numpy as np
import onnx
import psutil
import pytest
import torch

pytest.importorskip("transformers")

from pipeline.artifacts import checkpoint, files
from pipeline.artifacts.manifest import Manifest
from pipeline.artifacts.names import ARCHIVE_CONTRACT, KEYS
from pipeline.generation import text
from pipeline.models import load_spec
from pipeline.runtimes.runners import TorchRunner
from pipeline.serving.common.contract import declare
from pipeline.settings import Layout, Settings
from pipeline.stages import run_all
from tests.background import keep, kept
from tests.generation.checkpoints import save_decoder
from tests.helpers import REPO, archive_handler

# Each family at a tiny config of the same transformers class, as a model file.
TINY = {
    "resnet_tiny": (
        "from transformers import ResNetConfig\n\nfrom pipeline.models.resnet50 import make_spec\n\n"
        "CONFIG = ResNetConfig(embedding_size=8, hidden_sizes=[8, 16, 24, 32], depths=[1, 1, 1, 1], num_labels=10)\n"
        'SPEC = make_spec(CONFIG, name="resnet_tiny", image_size=32)\n'
    ),
    "vit_tiny": (
        "from transformers import ViTConfig\n\nfrom pipeline.models.vit_b16 import make_spec\n\n"
        "CONFIG = ViTConfig(image_size=32, patch_size=8, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,\n"
        "                   intermediate_size=64, num_labels=10)\n"
        'SPEC = make_spec(CONFIG, name="vit_tiny")\n'
    ),
    "bert_tiny": (
        "from transformers import BertConfig\n\nfrom pipeline.models.bert_base import make_spec\n\n"
        "CONFIG = BertConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,\n"
        "                    vocab_size=100, max_position_embeddings=64)\n"
        'SPEC = make_spec(CONFIG, name="bert_tiny")\n'
    ),
    "gpt2_tiny": (
        "from transformers import GPT2Config\n\nfrom pipeline.models.gpt2 import make_spec\n\n"
        "CONFIG = GPT2Config(n_embd=32, n_layer=2, n_head=2, vocab_size=100, n_positions=64)\n"
        'SPEC = make_spec(CONFIG, name="gpt2_tiny")\n'
    ),
}
TEXT = ("bert_tiny", "gpt2_tiny")

# The full-size contracts: (inputs, outputs, max_lengths), each tensor as (name, dtype, shape, low, high).
FULL_SIZE = {
    "resnet50": (
        [("pixel_values", "float32", ("batch", 3, 224, 224), None, None)],
        [("logits", "float32", ("batch", 1000), None, None)],
        {},
    ),
    "vit_b16": (
        [("pixel_values", "float32", ("batch", 3, 224, 224), None, None)],
        [("logits", "float32", ("batch", 1000), None, None)],
        {},
    ),
    "bert_base": (
        [("input_ids", "int64", ("batch", "seq"), 0, 30521), ("attention_mask", "int64", ("batch", "seq"), 0, 1)],
        [("last_hidden_state", "float32", ("batch", "seq", 768), None, None), ("pooler_output", "float32", ("batch", 768), None, None)],
        {"seq": 512},
    ),
    # A decoder deployed to generate: its 12 layers' keys and values in and out (pipeline.generation).
    "gpt2": (
        [
            ("input_ids", "int64", ("batch", "seq"), 0, 50256),
            ("attention_mask", "int64", ("batch", "total"), 0, 1),
            ("position_ids", "int64", ("batch", "seq"), 0, 1023),
            *(
                (f"past_key_values.{i}.{kind}", "float32", ("batch", 12, "past", 64), None, None)
                for i in range(12)
                for kind in ("key", "value")
            ),
        ],
        [
            ("logits", "float32", ("batch", 50257), None, None),
            *((f"present.{i}.{kind}", "float32", ("batch", 12, "total", 64), None, None) for i in range(12) for kind in ("key", "value")),
        ],
        {"seq": 1024, "total": 1024, "past": 1024},
    ),
}


def tiny_file(folder, name):
    path = folder / f"{name}.py"
    path.write_text(TINY[name])
    return path


def one_row_body(spec) -> dict:
    """The spec's example request, or one row of its sample inputs (images have no pasteable example)."""
    if spec.example_request is not None:
        return dict(spec.example_request)
    return {name: value[0].tolist() for name, value in spec.sample_inputs(1, np.random.default_rng(1)).items()}


def run_suite(*args: str, timeout: float) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(REPO / "scripts" / "real_models.py"), *args], capture_output=True, text=True, timeout=timeout
    )


def eager(model, spec, feed) -> dict[str, np.ndarray]:
    with torch.inference_mode():
        out = model(*[torch.from_numpy(np.asarray(feed[t.name], dtype=t.dtype)) for t in spec.inputs])
    return {t.name: v.numpy() for t, v in zip(spec.outputs, out)}


def assert_within_parity_bound(spec, got: np.ndarray, want: np.ndarray, what: str) -> None:
    tol = spec.tolerance
    err = np.abs(got.astype(np.float64) - want)
    bound = tol.atol + tol.rtol * np.abs(want) + tol.scaled * float(np.abs(want).max())
    assert np.all(err <= bound), f"{what}: max abs error {err.max():.3g}"


# --- fast: the full-size specs, and the tiny ones without the chain -----------------------


@pytest.mark.parametrize("model", list(FULL_SIZE))
def test_builtin_full_size_spec_declares_its_contract(model):
    spec = load_spec(model)  # builds no model: SPEC holds the config, build() runs in train
    inputs, outputs, max_lengths = FULL_SIZE[model]
    assert spec.name == model
    assert [(t.name, t.dtype, t.shape, t.low, t.high) for t in spec.inputs] == inputs
    assert [(t.name, t.dtype, t.shape, t.low, t.high) for t in spec.outputs] == outputs
    assert dict(spec.max_lengths) == max_lengths
    # The default tolerance: real fp32 models go through without one of their own.
    assert spec.tolerance == type(spec.tolerance)()
    if spec.generation is not None:  # a prompt, generated from: the tokens its byte alphabet gives fit the vocabulary
        assert spec.example_request == {"text": "Hello world!", "max_new_tokens": 16}
        tokenizer = text.load(spec.generation.tokenizer)
        ids = tokenizer.encode("Hello world!").ids
        assert ids and all(0 <= i <= spec.inputs[0].high for i in ids)
    elif spec.example_request is not None:
        feed = {t.name: np.asarray(spec.example_request[t.name], dtype=t.dtype)[None] for t in spec.inputs}
        spec.check_feed(feed, "example_request", "test")
        ids = feed["input_ids"]
        assert ids.min() >= 0 and ids.max() <= spec.inputs[0].high


def test_unknown_builtin_lists_the_models_not_their_helper():
    from pipeline.errors import SpecError

    with pytest.raises(SpecError, match="no built-in model named 'resnet_50'") as info:
        load_spec("resnet_50")
    listed = str(info.value).split("use one of: ")[1].split(";")[0].split(", ")
    assert {"resnet50", "vit_b16", "bert_base", "gpt2", "simple_nn"} <= set(listed) and "hf_common" not in listed


@pytest.mark.parametrize("name", list(TINY))
def test_tiny_config_rebuilds_from_json_model_args(name, tmp_path):
    """model_args are the config as JSON: build() gives back the tiny model, not the full-size one."""
    spec = load_spec(str(tiny_file(tmp_path, name)))
    result = spec.train(0)
    args = json.loads(json.dumps(result.model_args))
    model = spec.build(args)
    model.load_state_dict(result.state_dict, strict=True)
    assert sum(p.numel() for p in model.parameters()) < 200_000
    assert model.model.config.to_dict() == spec.build(result.model_args).model.config.to_dict()
    # Seeded: the same seed gives the same weights, another seed others.
    again, other = spec.train(0).state_dict, spec.train(1).state_dict
    assert all(torch.equal(again[k], v) for k, v in result.state_dict.items())
    assert not all(torch.equal(other[k], v) for k, v in result.state_dict.items() if v.is_floating_point())


@pytest.mark.parametrize("name", TEXT)
def test_text_feeds_pad_rows_and_cover_length_1(name, tmp_path):
    spec = load_spec(str(tiny_file(tmp_path, name)))
    sample = spec.check_feed(spec.sample_inputs(4, np.random.default_rng(0)), "sample", "test")
    length = sample["input_ids"].shape[1]
    assert length >= 2 and length != 4  # torch.export must see two distinct dynamic sizes
    assert np.all(sample["attention_mask"] == 1)
    assert spec.parity_cases is not None and spec.edge_inputs is not None
    cases = {k: spec.check_feed(v, k, "test") for k, v in spec.parity_cases(np.random.default_rng(0)).items()}
    padded = next(f for k, f in cases.items() if k.startswith("padded"))
    real_lengths = padded["attention_mask"].sum(axis=1)
    assert len(set(real_lengths)) == len(real_lengths) > 1 and real_lengths.min() >= 1
    # Right padding: ones, then zeros.
    assert all(np.all(row[:n] == 1) and np.all(row[n:] == 0) for row, n in zip(padded["attention_mask"], real_lengths))
    assert any(f["input_ids"].shape[1] == 1 for f in cases.values())
    edge = spec.edge_inputs()["input_ids"]
    assert edge.min() == 0 and edge.max() == spec.inputs[0].high


def test_suite_skips_a_missing_model_file_with_a_note(tmp_path):
    result = run_suite("--models", "tests/fixtures/no_such_model.py", "--root", str(tmp_path), timeout=120)
    assert result.returncode == 0, result.stderr
    [row] = json.loads((tmp_path / "reports" / "real-models.json").read_text())["rows"]
    assert row["status"] == "skipped" and "does not exist" in row["note"] and row["wall_s"] is None
    assert "no_such_model.py` skipped" in (tmp_path / "reports" / "real-models.md").read_text()


# --- slow: each family's tiny config through every stage and the archive's handler --------


def run_resnet_suite(folder: Path) -> None:
    """scripts/real_models.py run once on resnet_tiny (folder/resnet_tiny.py) into folder/p: the session's resnet_suite
    (tests/background.py). The suite runs `pipeline all` on it, so the chain test checks resnet_tiny there instead of
    building it a second time."""
    path = tiny_file(folder, "resnet_tiny")
    keep(folder, run_suite("--models", str(path), "--root", str(folder / "p"), "--timeout", "900", timeout=1000))


@pytest.fixture(scope="module")
def resnet_suite(builds):
    """scripts/real_models.py's run on resnet_tiny: (its process, the model file, the project root). Do not modify the project."""
    folder = builds.folder("resnet_suite")
    return kept(folder), folder / "resnet_tiny.py", folder / "p"


def build_tiny_chains(folder: Path) -> None:
    """Each tiny config but resnet_tiny (the suite's) as a model file in `folder`, through every stage in folder/<name>:
    the session's tiny_chains (tests/background.py)."""
    for name in TINY:
        if name != "resnet_tiny":
            run_all(Settings(model=str(tiny_file(folder, name)), root=folder / name))


@pytest.mark.slow
@pytest.mark.builds("tiny_chains", "resnet_suite")  # asked for below
@pytest.mark.parametrize("name", list(TINY))
def test_tiny_config_goes_through_the_chain_and_the_handler(name, tmp_path, request):
    # bert_tiny and gpt2_tiny need the trace stage to let transformers' shape comparisons
    # through; gpt2_tiny needs the checkpoint to hold its tied lm_head/wte weight.
    if name == "resnet_tiny":  # the suite's own `pipeline all` of it
        result, path, root = request.getfixturevalue("resnet_suite")
        assert result.returncode == 0, result.stdout + result.stderr
    else:
        built = request.getfixturevalue("tiny_chains")
        path, root = built / f"{name}.py", built / name
    spec = load_spec(str(path))
    layout = Layout(root.resolve(), spec.name)
    manifest = Manifest(layout.root, spec.name)
    for key in KEYS:
        artifact, rec = manifest.verified(key, "test")
        assert files.sha256_file(artifact) == rec.sha256

    # Every dynamic axis (batch; seq for text) is symbolic in the saved graph.
    graph = onnx.load(str(layout.onnx)).graph
    values = {v.name: v for v in (*graph.input, *graph.output)}
    for t in (*spec.inputs, *spec.outputs):
        dims = values[t.name].type.tensor_type.shape.dim
        assert [d.dim_value or None for d in dims] == [None if isinstance(d, str) else d for d in t.shape]
        assert all(dims[axis].dim_param for axis in t.dynamic_axes()), t.name

    report = json.loads((layout.reports / "parity.json").read_text())
    assert report["passed"]
    cases = {r["case"] for r in report["results"]}
    if spec.parity_cases is not None:
        assert set(spec.parity_cases(np.random.default_rng(0))) <= cases
    with zipfile.ZipFile(layout.mar) as zf:
        assert json.loads(zf.read(ARCHIVE_CONTRACT)) == declare(spec)

    # The checkpoint rebuilds the tiny model; the archive's handler answers as eager does.
    model, _ = checkpoint.load_model(manifest, spec, "test")
    handler, ctx = archive_handler(layout.mar, tmp_path / "archive")
    body = one_row_body(spec)
    [raw] = handler.handle([{"body": json.dumps(body).encode()}], ctx)
    assert ctx.status.get(0, (200,))[0] == 200, raw
    answer = json.loads(raw)
    want = eager(model, spec, {k: np.asarray(v)[None] for k, v in body.items()})
    for t in spec.outputs:
        assert_within_parity_bound(spec, np.asarray(answer[t.name], dtype=np.float32), want[t.name][0], t.name)


@pytest.mark.slow
def test_suite_reports_a_tiny_model_with_measurements(resnet_suite):
    result, _, root = resnet_suite
    assert result.returncode == 0, result.stdout + result.stderr
    report = json.loads((root / "reports" / "real-models.json").read_text())
    assert report["machine"]["cpus"] >= 1 and report["machine"]["memory_gib"] > 0 and report["machine"]["commit"]
    [row] = report["rows"]
    assert row["name"] == "resnet_tiny" and row["status"] == "passed", row
    assert set(row["stage_seconds"]) == {"train", "trace", "export", "pt2", "parity", "package"}
    assert row["wall_s"] >= sum(row["stage_seconds"].values())
    assert 50 < row["peak_rss_mb"] < 64_000  # a Python process with torch loaded, in MB
    assert 1_000 < row["params"] < 100_000
    assert row["archive_bytes"] == (root / "model_store" / "resnet_tiny.mar").stat().st_size
    assert row["parity_worst"]["passed"] and row["parity_sweep"]
    assert (root / row["log"]).exists()
    table = (root / "reports" / "real-models.md").read_text()
    [line] = [line for line in table.splitlines() if line.startswith("| `resnet_tiny`")]
    cells = [c.strip() for c in line.strip("|").split("|")]
    assert len(cells) == 14 and all(cells[i] != "—" for i in range(1, 13)), cells  # every measured column filled; served is "—"
    assert f"commit {report['machine']['commit']}" in table


@pytest.mark.parametrize("name", sorted(TINY))
def test_the_variant_metric_without_labels_follows_eager(name, tmp_path):
    """Random weights have no labelled data: the task metric is agreement with eager fp32, 1 for eager itself, lower for noise."""
    spec = load_spec(str(tiny_file(tmp_path, name)))
    assert spec.task_metric is not None and spec.fp16_tolerance is not None
    assert (spec.int8_tolerance is not None) == (name in ("resnet_tiny", "bert_tiny"))  # measured on the CPU for these two
    metric = spec.task_metric.evaluate
    model = spec.build(spec.train(0).model_args)
    model.load_state_dict(spec.train(0).state_dict)
    runner = TorchRunner("eager", model.eval(), spec)
    assert metric(runner.infer, 0) == pytest.approx(1.0)
    rng = np.random.default_rng(0)
    noise = metric(lambda feed: {k: rng.standard_normal(v.shape).astype(np.float32) for k, v in runner.infer(feed).items()}, 0)
    assert noise < 0.9


# --- text generation: the report's own fields, the user's command against transformers ---


def _script(name: str):
    """scripts/<name>.py as a module (scripts/ is not a package)."""
    spec = importlib.util.spec_from_file_location(f"scripts_{name}", REPO / "scripts" / f"{name}.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up while they are made
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def real_models():
    return _script("real_models")


def test_decoders_name_checkpoint_kinds_that_exist(real_models):
    kinds = _script("make_hf_checkpoint").KINDS
    assert set(real_models.DECODERS.values()) <= set(kinds)
    assert {"qwen2.5-0.5b-causal-lm", "llama-1.1b-causal-lm"} <= set(real_models.DECODERS.values())


def test_parting_names_the_token_and_the_margin(real_models):
    tol = load_spec("simple_nn").tolerance
    bound = tol.atol + tol.rtol * 3.0  # the best logit below is 3.0; scaled adds tol.scaled * 3.0
    close = np.array([[0.0, 3.0, 3.0 - bound / 2, -1.0]], dtype=np.float32)  # token 1 by half a bound
    clear = np.array([[0.0, 3.0, 1.0, -1.0]], dtype=np.float32)
    assert real_models.parting(0, [1, 1], [1, 1], [clear, clear], tol) == {"row": 0, "tokens": 2, "same": True, "near_tie": False}
    tie = real_models.parting(0, [1, 1], [1, 2], [clear, close], tol)
    assert tie["parted_at"] == 1 and tie["near_tie"] and not tie["same"] and tie["margin"] == pytest.approx(bound / 2, rel=1e-3)
    wrong = real_models.parting(0, [1, 1], [1, 2], [clear, clear], tol)
    assert wrong["parted_at"] == 1 and wrong["margin"] == pytest.approx(2.0) and not wrong["near_tie"]
    # One side stopped early (an EOS): they part where the shorter ends.
    assert real_models.parting(0, [1, 1, 1], [1, 1], [clear] * 3, tol)["parted_at"] == 2
    assert real_models.until_eos([5, 1, 7, 1], (1,)) == [5, 1] and real_models.until_eos([5, 7], (1,)) == [5, 7]


def test_wait_for_sees_other_processes_not_its_own_command_line(real_models):
    pattern = re.compile(r"sleep 31\.4159")
    assert real_models.others_matching(re.compile(re.escape(" ".join(psutil.Process().cmdline())))) == []
    sleeper = subprocess.Popen(["sleep", "31.4159"])
    try:
        # Popen returns once the child is forked; its command line is this one's until it has exec'd sleep.
        deadline = time.monotonic() + 10
        while psutil.Process(sleeper.pid).cmdline() != ["sleep", "31.4159"] and time.monotonic() < deadline:
            time.sleep(0.01)
        [found] = real_models.others_matching(pattern)
        assert found.startswith(f"{sleeper.pid}: ")
        waited = real_models.wait_for_quiet(pattern, poll_s=0.05, most_s=0.2)
        assert waited["went_ahead_beside"] == [found] and waited["pattern"] == pattern.pattern
    finally:
        sleeper.kill()
        sleeper.wait()
    assert real_models.wait_for_quiet(pattern, poll_s=0.05, most_s=5) == {"pattern": pattern.pattern, "seconds": 0, "went_ahead_beside": []}


def run_generation_suite(folder: Path) -> None:
    """scripts/real_models.py on a small Llama checkpoint (folder/tiny-llama) into folder/p, served too: the session's
    generation_suite (tests/background.py)."""
    model = save_decoder("llama", folder / "tiny-llama")
    keep(folder, run_suite("--models", f"hf:{model}", "--root", str(folder / "p"), "--serve", "--new-tokens", "8", timeout=600))


@pytest.fixture(scope="module")
def generation_suite(builds) -> Path:
    return builds.folder("generation_suite")


@pytest.mark.slow
def test_suite_reports_a_generation_model_and_checks_generate_against_transformers(generation_suite):
    result, root = kept(generation_suite), generation_suite / "p"
    assert result.returncode == 0, result.stdout + result.stderr
    [row] = json.loads((root / "reports" / "real-models.json").read_text())["rows"]
    assert row["status"] == "passed" and row["generation"] and row["parity_passed"] and row["within_target"], row
    assert row["wall_s"] < 600 and 50 < row["peak_rss_mb"] < 64_000
    assert row["exporter"].startswith("torch.export-based")
    assert row["onnx_bytes"] == (root / "artifacts" / "tiny-llama" / "model.onnx").stat().st_size
    # Parity's greedy rows: batch 1, and each row of the left-padded batch of three.
    cases = [g["case"] for g in row["greedy"]]
    assert sum("b=1" in c for c in cases) == 1 and sum("left-padded" in c for c in cases) == 3
    assert all(g["passed"] for g in row["greedy"])
    # The user's command: one prompt, then a left-padded batch of two, each row against transformers' generate.
    assert [g["prompts"] for g in row["generated"]] == [1, 2]
    for run in row["generated"]:
        assert "error" not in run and run["passed"] and len(run["tokens"]) == run["prompts"] == len(run["rows"])
        assert all(1 <= n <= 8 for n in run["tokens"]) and [r["tokens"] for r in run["rows"]] == run["tokens"]
    assert row["served"]["status"] == 200 and 1 <= row["served"]["tokens"] <= 16, row["served"]
    table = (root / "reports" / "real-models.md").read_text()
    [line] = [line for line in table.split("## Text generation")[1].splitlines() if line.startswith("| `tiny-llama`")]
    cells = [c.strip() for c in line.strip("|").split("|")]
    assert len(cells) == 13 and "—" not in cells, cells
    assert 0 < float(cells[2]) <= float(cells[1]) * psutil.cpu_count() + 1  # CPU seconds, within what the cores allow
    assert cells[5] == "✓ yes" and cells[8] == "✓ passed" and cells[9].startswith("✓ same") and cells[10].startswith("✓ 3 of 3 rows same")
    assert cells[11].startswith("b=1: ") and "; b=2: " in cells[11] and cells[12].startswith("✓ 200 in ")
