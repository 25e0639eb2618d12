"""Smaller variants: built with ONNX Runtime's tools, refused unless both gates pass, packaged apart from fp32."""

from __future__ import annotations

import dataclasses
import json
import zipfile

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from pipeline import cli
from pipeline.artifacts import files
from pipeline.artifacts.manifest import Manifest
from pipeline.artifacts.names import ARCHIVE_CONTRACT, MAR, archive_key, gate_key
from pipeline.errors import ParityError, PipelineError, SpecError
from pipeline.models import load_spec
from pipeline.runtimes.runners import cuda_available
from pipeline.runtimes.session import SessionConfig, create_session
from pipeline.serving.common.contract import Contract
from pipeline.serving.common.predictor import session_config
from pipeline.serving.torchserve import server
from pipeline.settings import Layout, Settings
from pipeline.spec import TaskMetric, Tolerance
from pipeline.stages import parity, variants
from tests.helpers import copy_root, needs_java

no_cuda = pytest.mark.skipif(cuda_available(), reason="checks the refusal on a machine without CUDA")


def private_copy(chains, tmp_path, model: str) -> tuple[Settings, Layout]:
    _, layout = chains(model)
    root = tmp_path / model
    copy_root(layout.root, root)
    return Settings(model=model, root=root), Layout(root.resolve(), model)


def replace_spec(monkeypatch, module_name: str, **changes) -> None:
    """The built-in model's SPEC with some fields changed, as load_spec will read it."""
    import importlib

    module = importlib.import_module(f"pipeline.models.{module_name}")
    monkeypatch.setattr(module, "SPEC", dataclasses.replace(module.SPEC, **changes))


def test_compare_allows_the_declared_fraction_beyond_the_bound():
    want = np.zeros(100, np.float32)
    got = want.copy()
    got[:3] = 1.0  # 3 % of the elements far off
    assert not parity.compare("e", "c", "y", want, got, Tolerance(1e-3, 0, max_mismatch=0.02)).passed
    loose = parity.compare("e", "c", "y", want, got, Tolerance(1e-3, 0, max_mismatch=0.05))
    assert loose.passed and loose.beyond == pytest.approx(0.03) and loose.p50_abs == 0 and loose.max_abs == 1
    assert loose.elements == 100


def _graph(nodes, inits, x_shape, y_shape):
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, x_shape)],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, y_shape)],
        initializer=inits,
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 20)])


def test_int8_plan_per_graph():
    shallow = helper.make_tensor("w1", TensorProto.FLOAT, [16, 1, 3, 3], np.zeros(144, np.float32))
    deep = helper.make_tensor("w2", TensorProto.FLOAT, [32, 16, 3, 3], np.zeros(32 * 144, np.float32))
    convs = _graph(
        [helper.make_node("Conv", ["x", "w1"], ["h"], name="c1"), helper.make_node("Conv", ["h", "w2"], ["y"], name="c2")],
        [shallow, deep],
        ["b", 1, 8, 8],
        ["b", 32, 4, 4],
    )
    plan = variants.int8_plan(convs)
    assert plan["method"] == "static" and plan["fp32_nodes"] == ["c1"] and "depth 9" in plan["why"]
    w = helper.make_tensor("w", TensorProto.FLOAT, [4, 4], np.zeros(16, np.float32))
    mlp = _graph([helper.make_node("MatMul", ["x", "w"], ["y"], name="m")], [w], ["b", 4], ["b", 4])
    assert variants.int8_plan(mlp)["method"] == "dynamic"
    nothing = _graph([helper.make_node("Relu", ["x"], ["y"])], [], ["b", 4], ["b", 4])
    with pytest.raises(PipelineError, match="no Conv, MatMul or Gemm"):
        variants.int8_plan(nothing)


@pytest.mark.slow
def test_digits_int8_passes_both_gates_and_ships_its_own_archive(digits_int8):
    settings, layout, results, fp32_mar = digits_int8
    assert [r.stage for r in results] == ["variants", "variants", "package"]
    manifest = Manifest(layout.root, "digits_cnn")
    for key in ("int8", gate_key("int8"), archive_key("int8")):
        manifest.verified(key, "test")
    build = manifest.records["int8"].details
    assert build["method"] == "static" and len(build["fp32_nodes"]) == 1 and build["calibration_source"] == "calibration_inputs"
    assert build["size_vs_fp32"] <= 0.35
    report = json.loads((layout.reports / "variant-int8.json").read_text())
    assert report["passed"] and report["device"] == "cpu"
    task = report["task_metric"]
    assert task["name"] == "held-out accuracy" and task["drop"] <= 0.005 and task["fp32"] > 0.9
    assert {"p50_abs", "p99_abs", "beyond"} <= set(report["results"][0])
    assert "| probabilities |" in (layout.reports / "variant-int8.md").read_text()
    with zipfile.ZipFile(layout.archive("int8")) as zf:
        contract = json.loads(zf.read(ARCHIVE_CONTRACT))
        assert files.sha256_bytes(zf.read("model.onnx")) == manifest.records["int8"].sha256
    assert contract["model"] == "digits_cnn-int8" and contract["variant"] == "int8" and contract["device"] == "cpu"
    assert files.sha256_file(layout.mar) == fp32_mar == manifest.records[MAR].sha256  # fp32 untouched
    again = list(variants.run(settings, ("int8",)))
    assert all(r.skipped for r in again)


@pytest.mark.slow
def test_calibrating_in_smaller_runs_makes_the_same_variant(digits_int8, tmp_path, monkeypatch):
    """The calibration ranges are min and max over every row, so how the rows are split into runs (memory) changes nothing."""
    from pipeline.stages import variants

    settings, layout, _, _ = digits_int8
    spec = load_spec("digits_cnn")
    monkeypatch.setattr(variants, "CALIBRATION_BATCH", variants.CALIBRATION_ROWS)  # every row in one run
    variants.make_int8(spec, layout.onnx, tmp_path / "one.onnx", settings.seed)
    assert files.sha256_file(tmp_path / "one.onnx") == Manifest(layout.root, "digits_cnn").records["int8"].sha256


@pytest.mark.slow  # store_demand's chain: the slow tier builds it for tests/test_models.py, the fast tier for this test alone
def test_store_demand_int8_is_dynamic_and_within_its_declared_error(chains, tmp_path):
    settings, layout = private_copy(chains, tmp_path, "store_demand")
    list(variants.run(settings, ("int8",)))
    manifest = Manifest(layout.root, "store_demand")
    assert manifest.records["int8"].details["method"] == "dynamic"
    task = manifest.records[gate_key("int8")].details["task_metric"]
    assert task["name"] == "held-out MSE" and not task["higher_is_better"]
    assert task["int8"] - task["fp32"] <= 0.001


@pytest.mark.slow
def test_a_tolerance_too_tight_for_int8_refuses_it_and_keeps_fp32(chains, tmp_path, monkeypatch):
    settings, layout = private_copy(chains, tmp_path, "digits_cnn")
    replace_spec(monkeypatch, "digits_cnn", int8_tolerance=Tolerance(atol=1e-5, rtol=1e-4))
    fp32 = files.sha256_file(layout.mar)
    with pytest.raises(ParityError) as info:
        list(variants.run(settings, ("int8",)))
    assert "int8 variant is refused" in info.value.problem and "beyond atol 1e-05" in info.value.problem
    assert "fp32 archive is untouched" in info.value.fix
    manifest = Manifest(layout.root, "digits_cnn")
    assert gate_key("int8") not in manifest.records and archive_key("int8") not in manifest.records
    assert not layout.archive("int8").exists()
    assert files.sha256_file(layout.mar) == fp32
    report = json.loads((layout.reports / "variant-int8.json").read_text())  # written before the gate decided
    assert not report["passed"] and not report["parity_passed"]
    with pytest.raises(PipelineError, match="gate has not passed"):
        variants.package_variant(settings, "int8")


@pytest.mark.slow
def test_a_task_metric_drop_beyond_the_declared_one_refuses_the_variant(chains, tmp_path, monkeypatch):
    settings, layout = private_copy(chains, tmp_path, "digits_cnn")

    def worse_by_a_point(infer, seed):  # fp32 is scored first, then the variant
        worse_by_a_point.calls += 1
        return 0.97 if worse_by_a_point.calls == 1 else 0.96

    worse_by_a_point.calls = 0
    replace_spec(monkeypatch, "digits_cnn", task_metric=TaskMetric("held-out accuracy", worse_by_a_point, max_drop=0.005))
    with pytest.raises(ParityError, match=r"held-out accuracy: 0.96 against fp32's 0.97, 0.01 worse \(allowed 0.005\)"):
        list(variants.run(settings, ("int8",)))
    assert archive_key("int8") not in Manifest(layout.root, "digits_cnn").records


def test_a_variant_without_a_declared_tolerance_is_refused_before_any_work(project, capsys):
    settings, layout = project
    code = cli.main(["variants", "--int8", "--root", str(settings.root)])
    assert code == 1
    assert "declares no int8_tolerance" in capsys.readouterr().err
    assert not layout.variant_onnx("int8").exists()
    assert cli.main(["variants", "--root", str(settings.root)]) == 2


@pytest.mark.slow
def test_fp16_keeps_float32_inputs_and_outputs(chains, tmp_path):
    _, layout = chains("digits_cnn")
    target = tmp_path / "model.fp16.onnx"
    plan = variants.make_fp16(layout.onnx, target)
    assert plan["method"] == "float16"
    model = onnx.load(str(target))
    assert [v.type.tensor_type.elem_type for v in model.graph.input] == [TensorProto.FLOAT]
    assert [v.type.tensor_type.elem_type for v in model.graph.output] == [TensorProto.FLOAT, TensorProto.INT64]
    assert {t.data_type for t in model.graph.initializer if t.data_type in (TensorProto.FLOAT, TensorProto.FLOAT16)} == {
        TensorProto.FLOAT16
    }
    # ONNX Runtime loads it (on the CPU it computes fp16 nodes through casts): the labels hold.
    feed = load_spec("digits_cnn").sample_inputs(16, np.random.default_rng(0))
    got = create_session(target, SessionConfig("cpu")).run(["label"], feed)[0]
    want = create_session(layout.onnx, SessionConfig("cpu")).run(["label"], feed)[0]
    assert np.mean(got == want) >= 0.9


@no_cuda
@pytest.mark.slow
def test_fp16_is_refused_without_cuda_and_nothing_ships(chains, tmp_path):
    settings, layout = private_copy(chains, tmp_path, "digits_cnn")
    with pytest.raises(PipelineError, match="verified on CUDA only; this machine has no CUDA device"):
        list(variants.run(settings, ("fp16",)))
    manifest = Manifest(layout.root, "digits_cnn")
    assert "fp16" in manifest.records  # the file is built and recorded; it is not gated
    assert gate_key("fp16") not in manifest.records and not layout.archive("fp16").exists()


def test_a_variant_serves_only_on_the_device_its_gate_ran_on():
    base = {"model": "m-fp16", "inputs": [], "outputs": [], "max_rows_per_request": 1}
    with pytest.raises(PipelineError, match="verified on CUDA only"):
        session_config(Contract({**base, "variant": "fp16", "device": "cuda"}), None, None)
    int8 = Contract({**base, "model": "m-int8", "variant": "int8", "device": "cpu"})
    assert session_config(int8, 0, None).device == "cpu"  # a GPU worker still runs int8 on the CPU


@pytest.mark.slow
def test_the_fp16_gate_passes_reports_and_packages_under_its_own_tolerance(chains, tmp_path, monkeypatch):
    """The fp16 gate's pass path where there is no GPU: the same code with fp16's device set to the CPU, where
    ONNX Runtime computes the fp16 nodes through casts; the report, the record and the archive all say "cpu".
    test_fp16_passes_its_gates_on_cuda runs it on CUDA where there is one."""
    settings, layout = private_copy(chains, tmp_path, "digits_cnn")
    monkeypatch.setattr(variants, "DEVICE", {**variants.DEVICE, "fp16": "cpu"})
    tol = load_spec("digits_cnn").fp16_tolerance
    fp32 = files.sha256_file(layout.mar)
    assert [r.stage for r in variants.run(settings, ("fp16",))] == ["variants", "variants", "package"]
    manifest = Manifest(layout.root, "digits_cnn")
    for key in ("fp16", gate_key("fp16"), archive_key("fp16")):
        manifest.verified(key, "test")
    assert variants.gate_passed(manifest, "fp16")
    report = json.loads((layout.reports / "variant-fp16.json").read_text())
    assert report["passed"] and report["parity_passed"] and report["build"]["method"] == "float16"
    assert (report["device"], report["engine"]) == ("cpu", "onnxruntime-cpu fp16")
    assert report["tolerance"] == dataclasses.asdict(tol)  # fp16's bound, not int8's or fp32's
    assert set(report["outputs"]) == {"probabilities", "label"}
    assert all(out["passed"] and out["beyond"] <= tol.max_mismatch for out in report["outputs"].values())
    task = report["task_metric"]
    assert task["name"] == "held-out accuracy" and task["passed"] and task["drop"] <= 0.005 and task["fp32"] > 0.9
    gate = manifest.records[gate_key("fp16")].details
    assert gate["passed"] and gate["device"] == "cpu" and 0.4 < gate["size_vs_fp32"] < 0.6  # fp16 halves the weights
    markdown = (layout.reports / "variant-fp16.md").read_text()
    assert markdown.startswith("# Variant fp16: digits_cnn — PASS") and "**Gate 1, parity** (pass)" in markdown
    assert f"atol {tol.atol:g} + rtol {tol.rtol:g}" in markdown and "| probabilities |" in markdown
    with zipfile.ZipFile(layout.archive("fp16")) as zf:
        contract = json.loads(zf.read(ARCHIVE_CONTRACT))
        assert files.sha256_bytes(zf.read("model.onnx")) == manifest.records["fp16"].sha256
    assert (contract["model"], contract["variant"], contract["device"]) == ("digits_cnn-fp16", "fp16", "cpu")
    assert files.sha256_file(layout.mar) == fp32  # fp32 untouched
    # The same file under a bound fp16 cannot meet: refused, its gate record forgotten, so it cannot be packaged.
    replace_spec(monkeypatch, "digits_cnn", fp16_tolerance=dataclasses.replace(tol, atol=1e-7, rtol=0.0, max_mismatch=0.0))
    with pytest.raises(ParityError, match="the fp16 variant is refused; parity: "):
        variants.gate(settings, "fp16")
    manifest = Manifest(layout.root, "digits_cnn")
    assert gate_key("fp16") not in manifest.records and not variants.gate_passed(manifest, "fp16")
    assert json.loads((layout.reports / "variant-fp16.json").read_text())["passed"] is False


@pytest.mark.cuda
@pytest.mark.slow
@pytest.mark.skipif(not cuda_available(), reason="needs a CUDA GPU")
def test_fp16_passes_its_gates_on_cuda(chains, tmp_path):
    settings, layout = private_copy(chains, tmp_path, "digits_cnn")
    list(variants.run(settings, ("fp16",)))
    report = json.loads((layout.reports / "variant-fp16.json").read_text())
    assert report["passed"] and report["device"] == "cuda" and report["engine"].startswith("onnxruntime-cuda")


@pytest.mark.parametrize(
    "field, message",
    [
        ("int8_tolerance=Tolerance(max_mismatch=1.5)", "max_mismatch"),
        ("task_metric=TaskMetric('acc', lambda infer, seed: 1.0, max_drop=-1)", "task_metric"),
        ("task_metric=lambda infer, seed: 1.0", "task_metric"),
    ],
)
def test_spec_refuses_a_bad_task_metric_or_mismatch(tmp_path, field, message):
    path = tmp_path / "my_model.py"
    path.write_text(
        "import dataclasses\n"
        "from pipeline.models.simple_nn import SPEC as BASE\n"
        "from pipeline.spec import TaskMetric, Tolerance\n"
        f"SPEC = dataclasses.replace(BASE, {field})\n"
    )
    with pytest.raises(SpecError, match=message):
        load_spec(str(path))


@pytest.mark.slow
@needs_java
def test_served_int8_answers_as_its_gate_verified(digits_int8, tmp_path_factory):
    """A real TorchServe serves model_store/digits_cnn-int8.mar; its answers are the variant's, within the variant's parity."""
    # The server writes its run folder into the project: a copy of the shared one (under a short path, for its sockets).
    root = tmp_path_factory.mktemp("served-int8") / "digits_cnn"
    copy_root(digits_int8[1].root, root)
    settings, layout = Settings(model="digits_cnn", root=root), Layout(root.resolve(), "digits_cnn")
    spec = load_spec("digits_cnn")
    variant = dataclasses.replace(settings, variant="int8")
    info = server.start(variant, auto_ports=True, timeout=120)
    try:
        assert info.model == "digits_cnn-int8" and info.predictions_url.endswith("/predictions/digits_cnn-int8")
        from pipeline.models.digits_cnn import load_split

        images = load_split(0)[1][:64]
        status, body = info.predict(json.dumps({"image": images.tolist()}).encode())
        assert status == 200, body
        answer = json.loads(body)
        # Exactly what the gated int8 file computes...
        own = create_session(layout.variant_onnx("int8"), SessionConfig("cpu")).run(None, {"image": images})
        np.testing.assert_allclose(answer["probabilities"], own[0], atol=1e-6)
        # ...and within the variant's declared parity of eager fp32.
        want = parity.TorchRunner("eager", _eager(layout, spec), spec).infer({"image": images})
        tol = spec.int8_tolerance
        diff = parity.compare(
            "served", "digits", "probabilities", want["probabilities"], np.asarray(answer["probabilities"], np.float32), tol
        )
        assert diff.passed, diff
        assert np.mean(np.asarray(answer["label"]) == want["label"]) >= 1 - tol.max_mismatch
        status, body = info.predict(json.dumps({"image": [[17] * 8] * 8}).encode())  # the contract's checks are the same
        assert status == 400 and b"values must lie in [0.0, 16.0]" in body
    finally:
        server.stop(variant)
    assert info.processes() == []


def _eager(layout, spec):
    from pipeline.artifacts import checkpoint

    return checkpoint.load_model(Manifest(layout.root, spec.name), spec, "test")[0]


def test_missing_quantization_tools_are_a_clear_error(monkeypatch, tmp_path):
    import sys

    monkeypatch.setitem(sys.modules, "onnxruntime.quantization", None)  # as in an install without its Python tools
    with pytest.raises(PipelineError, match="onnxruntime.quantization cannot be imported") as info:
        variants.make_int8(load_spec("simple_nn"), tmp_path / "in.onnx", tmp_path / "out.onnx", 0)
    assert "reinstall the pinned runtime" in info.value.fix
