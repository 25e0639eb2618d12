import json
import subprocess
import sys
from dataclasses import asdict
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from pipeline.artifacts.manifest import Manifest
from pipeline.errors import ParityError, PipelineError
from pipeline.models import load_spec
from pipeline.settings import Settings
from pipeline.spec import Tolerance
from pipeline.stages import package, parity
from tests.helpers import REPO

TOL = Tolerance(atol=1e-5, rtol=1e-4, scaled=0.0)  # the element-wise terms alone


def test_compare_within_and_beyond_tolerance():
    want = np.array([[1.0], [1000.0]], dtype=np.float32)
    ok = parity.compare("e", "c", "y", want, want + np.float32(0.05) * np.array([[0], [1]], np.float32), TOL)
    assert ok.passed and ok.max_abs == pytest.approx(0.05, rel=1e-3)
    bad = parity.compare("e", "c", "y", want, want + np.float32(1e-3), TOL)
    assert not bad.passed and bad.tolerance_used > 1
    assert bad.batch_size == 2


def test_compare_nan_and_shape():
    want = np.array([1.0, np.nan], dtype=np.float32)
    assert parity.compare("e", "c", "y", want, want.copy(), TOL).passed
    got = np.array([1.0, 2.0], dtype=np.float32)
    assert not parity.compare("e", "c", "y", want, got, TOL).passed
    assert not parity.compare("e", "c", "y", np.zeros((2, 1)), np.zeros((2,)), TOL).passed


def test_report_covers_every_engine_batch_and_edge_case(built):
    _, layout = built
    report = json.loads((layout.reports / "parity.json").read_text())
    assert report["passed"] is True
    cases = {(r["engine"], r["batch_size"]) for r in report["results"] if r["case"].startswith("random")}
    for engine in ("torchscript", "onnxruntime-cpu"):
        for b in (1, 2, 7, 64, 1000):
            assert (engine, b) in cases
    assert any(r["case"] == "edge values" for r in report["results"])
    tol = report["tolerance"]
    for r in report["results"]:
        assert r["max_abs"] >= 0 and r["max_rel"] >= 0 and r["mean_abs"] >= 0
        # The case's own bound: atol + rtol·|want| + scaled·scale, at its largest where |want| is the scale.
        bound = tol["atol"] + (tol["rtol"] + tol["scaled"]) * r["scale"]
        assert r["passed"] and r["max_abs"] <= bound, r
        # tolerance_used is the worst element's error over its own bound, which is at most `bound`.
        assert r["max_abs"] / bound <= r["tolerance_used"] * (1 + 1e-6) and r["tolerance_used"] <= 1, r
        assert r["max_scaled"] == pytest.approx(r["max_abs"] / r["scale"]), r
    assert report["tolerance"] == {"atol": 1e-5, "rtol": 1e-4, "max_mismatch": 0.0, "scaled": 1e-5}
    assert report["sweep"]["mode"] == "sized" and report["sweep"]["ran_batch_sizes"] == [1, 2, 7, 64, 1000]
    assert report["vacuous"] == []
    assert (layout.reports / "parity.md").read_text().startswith("# Parity: simple_nn — PASS")


def _perturb_onnx_weights(layout, delta: float) -> None:
    """Change a weight in model.onnx and re-register it, as a broken exporter would."""
    model = onnx.load(str(layout.onnx))
    init = model.graph.initializer
    biggest = max(init, key=lambda t: numpy_helper.to_array(t).size)
    arr = numpy_helper.to_array(biggest).copy()
    arr.flat[0] += delta
    biggest.CopyFrom(numpy_helper.from_array(arr, biggest.name))
    onnx.save(model, str(layout.onnx))
    manifest = Manifest(layout.root, "simple_nn")
    rec = manifest.records["onnx"]
    manifest.record("onnx", layout.onnx, rec.stage, rec.inputs, rec.settings, rec.seconds, rec.details)


def test_gate_fails_on_perturbed_weights_and_blocks_packaging(project):
    settings, layout = project
    _perturb_onnx_weights(layout, 0.5)
    with pytest.raises(ParityError, match=r"worst is onnxruntime-cpu output 'y' at .*max abs error") as err:
        parity.run(settings)
    assert "reports/simple_nn/parity.json" in str(err.value)
    report = json.loads((layout.reports / "parity.json").read_text())
    assert report["passed"] is False and report["failures"] > 0
    assert report["worst"]["engine"] == "onnxruntime-cpu"
    assert "FAIL" in (layout.reports / "parity.md").read_text()
    # TorchScript was not touched and still passes.
    assert all(r["passed"] for r in report["results"] if r["engine"] == "torchscript")
    with pytest.raises(PipelineError, match="parity has not passed"):
        package.run(settings)


def test_gate_blocks_packaging_after_a_retrain_the_export_did_not_follow(project):
    """A new checkpoint with the old model.onnx: the old parity pass must not ship it."""
    settings, layout = project
    manifest = Manifest(layout.root, "simple_nn")
    rec = manifest.records["checkpoint"]
    layout.checkpoint.write_bytes(layout.checkpoint.read_bytes() + b" ")  # stands in for a retrain
    manifest.record("checkpoint", layout.checkpoint, rec.stage, rec.inputs, rec.settings, rec.seconds, rec.details)
    with pytest.raises(PipelineError, match="parity has not passed"):
        package.run(Settings(root=settings.root, force=True))


def test_tolerance_override_is_honoured(project):
    settings, layout = project
    _perturb_onnx_weights(layout, 1e-3)
    with pytest.raises(ParityError):
        parity.run(settings)
    loose = Settings(root=settings.root, atol=1.0, rtol=1e-2)
    result = parity.run(loose)
    assert not result.skipped and result.details["passed"]


def test_parity_skips_when_unchanged(built):
    settings, _ = built
    assert parity.run(settings).skipped


def test_parity_gives_the_cuda_engine_the_served_precision(built, monkeypatch):
    """Parity's CUDA session comes from the same factory with the precision the archive will serve."""
    from pipeline.runtimes.runners import OrtRunner
    from pipeline.runtimes.session import SessionConfig

    seen = []

    def spy(name, path, spec, config):
        seen.append((name, config))
        return OrtRunner(name, path, spec, SessionConfig("cpu"))

    monkeypatch.setattr(parity, "cuda_available", lambda: True)
    monkeypatch.setattr(parity, "OrtRunner", spy)
    _, layout = built
    loaders, _ = parity.engines(load_spec("simple_nn"), Manifest(layout.root, "simple_nn"), "tf32")
    assert not seen  # nothing is loaded until its pass
    for _, load in loaders:
        load()
    configs = dict(seen)
    assert configs["onnxruntime-cpu"].device == "cpu"
    assert configs["onnxruntime-cuda"].device == "cuda" and configs["onnxruntime-cuda"].precision == "tf32"


def test_tf32_needs_a_declared_tolerance(built):
    from pipeline.errors import SpecError
    from pipeline.settings import cuda_tolerance

    with pytest.raises(SpecError, match="declares no tf32_tolerance"):
        cuda_tolerance(Settings(cuda_precision="tf32"), load_spec("simple_nn"))
    digits = load_spec("digits_cnn")
    assert cuda_tolerance(Settings(cuda_precision="tf32"), digits) == digits.tf32_tolerance
    assert cuda_tolerance(Settings(), digits) == digits.tolerance  # fp32: the model's own bound


def test_parity_report_and_manifest_record_the_cuda_precision(built):
    import json

    _, layout = built
    report = json.loads((layout.reports / "parity.json").read_text())
    assert report["cuda_precision"] == "fp32" and report["cuda_tolerance"] == report["tolerance"]
    assert Manifest(layout.root, "simple_nn").records["parity"].settings["cuda_precision"] == "fp32"
    assert "CUDA precision: **fp32**" in (layout.reports / "parity.md").read_text()


def test_package_refuses_a_precision_parity_did_not_verify(project, monkeypatch):
    from dataclasses import replace

    from pipeline.stages import package as package_module

    settings, _ = project
    spec = replace(load_spec("simple_nn"), tf32_tolerance=Tolerance(1e-2, 1e-2))
    original = package_module.resolve
    monkeypatch.setattr(package_module, "resolve", lambda s: (spec, original(s)[1]))
    with pytest.raises(PipelineError, match="parity verified CUDA precision fp32, this archive would serve tf32"):
        package.run(replace(settings, cuda_precision="tf32", force=True))


# The default rule against real fp32 error and real bugs. The figures are ResNet-50's:
# eager and ONNX Runtime differ by up to 7.6e-5 on logits whose scale is about 136.
DEFAULT = Tolerance()


def _logits(rng, rows=64, width=1000, scale=136.0):
    want = rng.standard_normal((rows, width)).astype(np.float32)
    return want * np.float32(scale / np.abs(want).max())


def test_default_passes_deep_fp32_error_near_zero_that_a_fixed_atol_fails():
    rng = np.random.default_rng(0)
    want = _logits(rng)
    noise = rng.uniform(-1, 1, want.shape).astype(np.float32) * np.float32(7.6e-5)
    got = want + noise
    assert parity.compare("e", "c", "logits", want, got, DEFAULT).passed
    assert not parity.compare("e", "c", "logits", want, got, Tolerance(scaled=0.0)).passed  # the old rule
    diff = parity.compare("e", "c", "logits", want, got, DEFAULT)
    assert diff.scale == pytest.approx(136.0, rel=1e-4)
    assert diff.max_scaled == pytest.approx(diff.max_abs / diff.scale)


def test_default_fails_drift_of_a_thousandth_of_the_scale():
    want = _logits(np.random.default_rng(1))
    drift = parity.compare("e", "c", "logits", want, want + np.float32(1e-3 * 136.0), DEFAULT)
    assert not drift.passed and drift.tolerance_used > 10


def test_default_fails_a_wrong_op_and_swapped_outputs():
    rng = np.random.default_rng(2)
    x = rng.standard_normal((64, 256)).astype(np.float32)
    gelu = (0.5 * x * (1 + np.tanh(0.7978845608 * (x + 0.044715 * x**3)))).astype(np.float32)
    relu = np.maximum(x, 0)
    assert not parity.compare("e", "c", "h", gelu, relu, DEFAULT).passed
    pooled = _logits(rng, width=256, scale=3.0)
    assert not parity.compare("e", "c", "pooler_output", pooled, x * np.float32(3.0 / np.abs(x).max()), DEFAULT).passed


def test_default_fails_a_baked_in_batch_size_or_length():
    want = _logits(np.random.default_rng(3), rows=7)
    assert not parity.compare("e", "c", "logits", want, want[:4], DEFAULT).passed
    assert not parity.compare("e", "c", "logits", want, want[:, :999], DEFAULT).passed


def test_compare_works_in_chunks_with_the_same_answer(monkeypatch):
    rng = np.random.default_rng(4)
    want = _logits(rng, rows=8, width=1000)
    got = want + rng.uniform(-1, 1, want.shape).astype(np.float32) * np.float32(1e-3)
    whole = parity.compare("e", "c", "y", want, got, DEFAULT)
    monkeypatch.setattr(parity, "CHUNK", 333)
    chunked = parity.compare("e", "c", "y", want, got, DEFAULT)
    assert asdict(chunked) == pytest.approx(asdict(whole))


def test_an_output_that_cannot_fail_is_flagged():
    evidence = parity.Evidence()
    rng = np.random.default_rng(5)
    for rows in (2, 7):
        evidence.add(
            {
                "zero_head": np.zeros((rows, 1000), np.float32),
                "tiny": rng.standard_normal((rows, 10)).astype(np.float32) * np.float32(1e-9),
                "real": rng.standard_normal((rows, 10)).astype(np.float32),
            }
        )
    flagged = {v["output"]: v["why"] for v in evidence.vacuous(DEFAULT)}
    assert set(flagged) == {"zero_head", "tiny"}
    assert "same for every input" in flagged["zero_head"]
    assert "within atol" in flagged["tiny"]


def test_a_constant_output_is_flagged_in_the_report_and_the_summary(project, monkeypatch):
    """A model whose output ignores its input (torchvision's zero-initialised ViT head) passes, flagged."""
    import dataclasses

    from pipeline.cli.stages import summary
    from pipeline.stages import STAGES
    from pipeline.stages import train as train_stage

    settings, layout = project
    spec = load_spec("simple_nn")

    def zeroed(seed):  # trained once, then every weight zero
        trained = spec.train(seed)
        return dataclasses.replace(trained, state_dict={k: v * 0 for k, v in trained.state_dict.items()})

    constant = dataclasses.replace(spec, train=zeroed)
    for module in (train_stage, parity):
        original = module.resolve
        monkeypatch.setattr(module, "resolve", lambda s, original=original: (constant, original(s)[1]))
    # The stages up to the gate, in the project's copy: the archive is not what is checked, and the AOTInductor
    # package (pt2=False: recorded as not made, so parity leaves it out) would only add its compile time.
    forced = dataclasses.replace(settings, force=True, pt2=False)
    results = [STAGES[stage](forced) for stage in ("train", "trace", "export", "pt2", "parity")]
    report = json.loads((layout.reports / "parity.json").read_text())
    assert report["passed"] and [v["output"] for v in report["vacuous"]] == ["y"]
    assert "**Proves nothing:** output `y`" in (layout.reports / "parity.md").read_text()
    assert "WARNING  output 'y' proves nothing" in summary(results, settings, 1.0)


def test_the_sized_sweep_leaves_out_what_the_budget_cannot_pay_and_says_why(project):
    from dataclasses import replace

    settings, layout = project
    result = parity.run(replace(settings, force=True, parity_budget_s=1e-9))
    report = json.loads((layout.reports / "parity.json").read_text())
    assert report["passed"] and report["sweep"]["ran_batch_sizes"] == [1, 2, 7]
    assert [s["case"] for s in report["sweep"]["skipped"]] == ["random b=64", "random b=1000"]
    assert all("s budget" in s["why"] and "eager took" in s["why"] for s in report["sweep"]["skipped"])
    assert "left out random b=64" in (layout.reports / "parity.md").read_text()
    assert result.details["batch_sizes"] == [1, 2, 7]
    full = parity.run(replace(settings, force=True, parity_budget_s=1e-9, parity_sweep="full"))
    assert full.details["batch_sizes"] == [1, 2, 7, 64, 1000] and full.details["left_out"] == []


def test_the_memory_budget_bounds_the_sweep(project):
    from dataclasses import replace

    settings, layout = project
    parity.run(replace(settings, force=True, parity_budget_mb=1e-6))
    report = json.loads((layout.reports / "parity.json").read_text())
    skipped = report["sweep"]["skipped"]
    assert skipped and all("MiB budget" in s["why"] for s in skipped)


def test_the_manifest_records_each_stage_peak_memory(built):
    """The stages ran in this process (run_all, in the session's fixture): each one's peak is this
    process's resident memory then, at least a process holding torch, at most the process's own peak."""
    _, layout = built
    records = Manifest(layout.root, "simple_nn").records
    torch_only = "import torch; from pipeline.artifacts import cost; print(cost.rss_mb())"
    floor = float(subprocess.run([sys.executable, "-c", torch_only], capture_output=True, text=True, check=True, cwd=REPO).stdout)
    with open("/proc/self/status") as f:
        ceiling = next(int(line.split()[1]) for line in f if line.startswith("VmHWM:")) / 1024
    peaks = {key: records[key].peak_rss_mb for key in ("checkpoint", "torchscript", "onnx", "parity", "mar")}
    # The kernel updates its high-water mark lazily and its counters lag by pages per thread; the figure is rounded: 1 % slack.
    assert all(floor <= mb <= ceiling * 1.01 for mb in peaks.values()), (floor, peaks, ceiling)


@pytest.mark.slow  # text_image_root: in the fast tier, two whole chains (bert_text, vit_images) for this test alone
def test_a_new_tokenizer_reruns_parity_and_nothing_before_it(text_image_root, tmp_path):
    """Parity's text cases are made by the tokenizer the archive carries: a new tokenizer.json re-runs
    parity (and the archive), while train, trace and export, which never read it, stay up to date."""
    from pipeline.stages import STAGES
    from tests.fixtures.bert_text import build_tokenizer
    from tests.serving import real_models

    project = real_models.copy(text_image_root, tmp_path / "project")["bert_text"]
    path = Path(project.model)
    tokenizer = build_tokenizer()
    tokenizer.normalizer = None  # case kept: "The" is now an unknown word, so the tokens differ
    tokenizer.save(str(path.with_name("tokenizer.json")))
    results = {r.stage: r for r in (stage(project) for stage in STAGES.values())}
    assert all(results[s].skipped for s in ("train", "trace", "export")), {s: r.summary for s, r in results.items()}
    assert not results["parity"].skipped and results["parity"].details["passed"]
    assert not results["package"].skipped
