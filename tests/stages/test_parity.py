import json

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from pipeline.artifacts.manifest import Manifest
from pipeline.errors import ParityError, PipelineError
from pipeline.settings import Settings
from pipeline.spec import Tolerance, load_spec
from pipeline.stages import package, parity

TOL = Tolerance(atol=1e-5, rtol=1e-4)


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
    for r in report["results"]:
        assert r["max_abs"] >= 0 and r["max_rel"] >= 0 and r["mean_abs"] >= 0
        assert r["max_abs"] <= report["tolerance"]["atol"] + report["tolerance"]["rtol"] * 3000
    assert report["tolerance"] == {"atol": 1e-5, "rtol": 1e-4, "max_mismatch": 0.0}
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
    parity.engines(load_spec("simple_nn"), Manifest(layout.root, "simple_nn"), "tf32")
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
