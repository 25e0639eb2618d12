"""The AOTInductor package (`python -m pipeline pt2`): made, recorded, held to eager, refused when tampered
or built elsewhere, optional where it cannot be made, and served on TorchServe with no model code."""

from __future__ import annotations

import dataclasses
import json
import zipfile

import numpy as np
import pytest
import torch

from pipeline.artifacts import archive, checkpoint
from pipeline.artifacts.manifest import Manifest
from pipeline.artifacts.names import ARCHIVE_PT2, PT2
from pipeline.errors import IntegrityError, PipelineError
from pipeline.models import load_spec
from pipeline.runtimes import pt2 as runtime
from pipeline.serving.common.contract import Contract
from pipeline.serving.common.predictor import open_model
from pipeline.settings import Layout, Settings
from pipeline.stages import STAGES, package, parity, pt2, run_all, trace
from pipeline.stages.fresh import not_made_note
from tests.helpers import REPO, copy_root, needs_java


def _record(settings: Settings) -> dict:
    return json.loads((settings.root / "artifacts" / "simple_nn" / "manifest.json").read_text())["artifacts"][PT2]


def test_the_chain_makes_a_package_recorded_with_what_it_is_tied_to(built):
    settings, layout = built
    rec = _record(settings)
    assert rec["path"] == "artifacts/simple_nn/model.pt2" and layout.pt2().is_file()
    assert rec["details"]["tied_to"] == runtime.tied_to("cpu") and rec["details"]["tied_to"]["cpu_isa"] in runtime.cpu_isas()
    assert rec["details"]["compile_s"] > 0 and rec["settings"]["inductor_configs"] == {"freezing": True}
    assert rec["details"]["refined_shapes"] is None and isinstance(rec["details"]["warnings"], list)
    assert list(STAGES).index("pt2") == list(STAGES).index("export") + 1


def test_parity_holds_the_package_to_eager_on_every_case(built):
    settings, layout = built
    report = json.loads((layout.reports / "parity.json").read_text())
    assert "aotinductor-cpu" in report["engines"] and report["passed"]
    cases = {r["case"] for r in report["results"] if r["engine"] == "onnxruntime-cpu"}
    checked = [r for r in report["results"] if r["engine"] == "aotinductor-cpu"]
    assert {r["case"] for r in checked} == cases and all(r["passed"] for r in checked)
    assert report["inputs"][PT2] == _record(settings)["sha256"]


def test_the_package_answers_as_eager_through_the_session(built):
    settings, layout = built
    session = runtime.Pt2Session(layout.pt2(), ["x"])
    x = np.random.default_rng(3).uniform(-10, 10, (37, 1)).astype(np.float32)
    [got] = session.run(["y"], {"x": x})
    model, _ = checkpoint.load_model(Manifest(layout.root, "simple_nn"), load_spec("simple_nn"), "test")
    with torch.inference_mode():
        want = model(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(got, want, atol=1e-5, rtol=1e-4)


def test_a_tampered_package_or_one_built_for_another_cpu_is_refused_and_its_stage_rebuilds_it(project):
    settings, layout = project
    assert pt2.run(settings).skipped
    data = bytearray(layout.pt2().read_bytes())
    data[len(data) // 2] ^= 0xFF
    layout.pt2().write_bytes(bytes(data))
    with pytest.raises(IntegrityError, match=r"model.pt2 does not match the manifest.*refusing to load it"):
        parity.run(dataclasses.replace(settings, force=True))
    layout.pt2().write_bytes(bytes(data[: len(data) // 2]) + bytes([data[len(data) // 2] ^ 0xFF]) + bytes(data[len(data) // 2 + 1 :]))
    manifest = Manifest(layout.root, "simple_nn")
    rec = manifest.records[PT2]
    other = {**rec.details["tied_to"], "cpu_isa": "neon sve256"}
    manifest.records[PT2] = dataclasses.replace(rec, details={**rec.details, "tied_to": other}, settings={**rec.settings, "tied_to": other})
    manifest.save()
    with pytest.raises(PipelineError, match=r"compiled for the CPU instruction set 'neon sve256', which this CPU lacks") as caught:
        runtime.verified_package(Manifest(layout.root, "simple_nn"), "cpu", "parity")
    assert "python -m pipeline pt2 --model simple_nn --force" in caught.value.fix
    again = pt2.run(settings)  # what it is tied to is part of its settings: this machine's package replaces it
    assert not again.skipped and "model.pt2 for cpu" in again.summary
    assert _record(settings)["details"]["tied_to"]["cpu_isa"] in runtime.cpu_isas()
    assert parity.run(settings).details["passed"]


def test_no_pt2_records_why_and_parity_and_package_go_on_without_it(project):
    settings, layout = project
    off = dataclasses.replace(settings, pt2=False)
    result = pt2.run(off)
    assert not layout.pt2().exists() and not_made_note(layout.pt2()).is_file()
    assert "not asked for (--no-pt2)" in result.summary
    report = parity.run(settings).details
    assert "aotinductor-cpu" not in report["engines"]
    skipped = json.loads((layout.reports / "parity.json").read_text())["skipped_engines"]
    assert {"engine": "aotinductor-cpu", "reason": "not made: not asked for (--no-pt2)"} in skipped
    assert package.run(settings).outputs
    with pytest.raises(PipelineError, match=r"no AOTInductor package to serve \(not asked for \(--no-pt2\)\)"):
        package.run(dataclasses.replace(settings, serve_engine="aotinductor"))


def test_a_model_torch_export_cannot_take_gets_a_pt2_reason_and_the_chain_goes_on(project, monkeypatch):
    settings, layout = project

    def refuse(*args, **kwargs):
        raise RuntimeError("Could not guard on data-dependent expression Eq(u0, 1) (GuardOnDataDependentSymNode)")

    monkeypatch.setattr(torch.export, "export", refuse)
    result = pt2.run(dataclasses.replace(settings, force=True))
    assert result.details["not_made"].startswith("torch.export.export could not make a package of simple_nn: RuntimeError")
    assert result.summary.startswith("package not made, the chain goes on with model.onnx and model.ts: torch.export.export")
    assert "torch.where" in result.details["what_to_do"] and "--no-pt2" in result.details["what_to_do"]
    assert "reports/simple_nn/pt2.log" in result.details["not_made"] and (layout.reports / "pt2.log").is_file()
    monkeypatch.undo()
    assert not layout.pt2().exists()
    after = {r.stage: r for r in run_all(settings)}
    assert after["pt2"].skipped and after["parity"].details["passed"] and "aotinductor-cpu" not in after["parity"].details["engines"]


def test_torch_refusing_jit_trace_skips_torchscript_with_one_line(project, monkeypatch):
    settings, layout = project

    def refused(*args, **kwargs):
        raise RuntimeError("`torch.jit.trace` is deprecated. Please switch to `torch.compile` or `torch.export`.")

    monkeypatch.setattr(torch.jit, "trace", refused)
    result = trace.run(dataclasses.replace(settings, force=True))
    assert result.details["not_made"].startswith(f"torch {torch.__version__} refuses torch.jit.trace (RuntimeError:")
    assert "the chain goes on with model.onnx and model.pt2" in result.details["what_to_do"]
    assert not layout.torchscript.exists()
    with pytest.raises(PipelineError, match="refuses torch.jit.trace"):
        trace.run(dataclasses.replace(settings, force=True, require_torchscript=True))


def test_no_torchscript_skips_it_on_purpose_and_the_chain_goes_on(project):
    settings, layout = project
    results = {r.stage: r for r in run_all(dataclasses.replace(settings, torchscript=False))}
    assert results["trace"].details["not_made"] == "not asked for (--no-torchscript)" and not layout.torchscript.exists()
    engines = results["parity"].details["engines"]
    assert "torchscript" not in engines and {"onnxruntime-cpu", "aotinductor-cpu"} <= set(engines)


@pytest.fixture(scope="module")
def pt2_archive(built_root, tmp_path_factory):
    root = tmp_path_factory.mktemp("pt2-archive") / "project"
    copy_root(built_root, root)
    settings = Settings(root=root, serve_engine="aotinductor")
    package.run(settings)
    return settings, Layout(root.resolve(), "simple_nn")


def test_the_archive_carries_the_checked_package_and_names_its_engine(pt2_archive):
    settings, layout = pt2_archive
    inspected = archive.inspect_archive(layout.mar)
    assert ARCHIVE_PT2 in inspected["members"]
    contract = inspected["contract"]
    assert contract["engine"] == "aotinductor" and contract["pt2"]["sha256"] == _record(settings)["sha256"]
    assert contract["pt2"]["tied_to"] == runtime.tied_to("cpu")


def test_an_archive_whose_package_differs_from_its_contract_is_refused(pt2_archive, tmp_path):
    _, layout = pt2_archive
    swapped = tmp_path / "swapped.mar"
    with zipfile.ZipFile(layout.mar) as src, zipfile.ZipFile(swapped, "w") as dst:
        for info in src.infolist():
            data = src.read(info)
            dst.writestr(info, data[:-1] + bytes([data[-1] ^ 1]) if info.filename == ARCHIVE_PT2 else data)
    with pytest.raises(IntegrityError, match="holds a model.pt2 other than the one its contract records"):
        archive.inspect_archive(swapped)


def test_a_server_refuses_a_package_compiled_for_another_cpu(pt2_archive, tmp_path):
    _, layout = pt2_archive
    archive.inspect_archive(layout.mar)
    model = archive.extract_model(layout.mar, tmp_path)
    data = archive.read_contract(layout.mar)
    data["pt2"]["tied_to"]["cpu_isa"] = "neon sve256"
    with pytest.raises(PipelineError, match=r"\[serve\] simple_nn's model.pt2 was compiled on another machine"):
        open_model(model, Contract(data))
    served = open_model(model, Contract(archive.read_contract(layout.mar)))
    assert served.provider.startswith("AOTInductor (cpu")


@pytest.mark.slow
@needs_java
def test_torchserve_serves_the_package_as_eager_answers_and_refuses_bad_input(pt2_archive):
    from pipeline.serving.torchserve import server as serve

    settings, layout = pt2_archive
    info = serve.start(settings, auto_ports=True, timeout=120)
    try:
        x = np.random.default_rng(11).uniform(-10, 10, 100).astype(np.float32)
        status, body = info.predict(json.dumps({"x": x.tolist()}).encode())
        assert status == 200
        model, _ = checkpoint.load_model(Manifest(layout.root, "simple_nn"), load_spec("simple_nn"), "test")
        with torch.inference_mode():
            want = model(torch.from_numpy(x).unsqueeze(1)).squeeze(1).numpy()
        np.testing.assert_allclose(np.array(json.loads(body)["y"], dtype=np.float32), want, atol=1e-5, rtol=1e-4)
        status, body = info.predict(b'{"x": [[1.0, 2.0]]}')
        assert status == 400 and "x" in json.loads(body)["error"]
        logs = "".join(p.read_text(errors="replace") for p in (layout.root / "run" / "simple_nn" / "logs").glob("*.log"))
        assert "model simple_nn: AOTInductor (cpu" in logs
    finally:
        serve.stop(settings)
    assert info.processes() == []


def test_the_pt2_command_runs_the_stage_alone(project, capsys):
    from pipeline import cli

    settings, _ = project
    assert cli.main(["pt2", "--root", str(settings.root)]) == 0
    out = capsys.readouterr().out
    assert "· pt2      skipped" in out and "up to date" in out


def test_an_axis_torch_export_fixes_is_a_reason_not_a_package_of_one_size(tmp_path):
    """nn.LSTM's time axis: torch.export suggests fixing it to the example's length; the stage refuses to."""
    from pipeline.stages import train

    settings = Settings(model=str(REPO / "tests" / "zoo" / "lstm.py"), root=tmp_path)
    train.run(settings)
    result = pt2.run(settings)
    assert result.details["not_made"] == (
        "torch.export fixed lstm's x axis 1 (steps) to 12: the package would take only the example's size there"
    )
    assert not Layout(tmp_path.resolve(), "lstm").pt2().exists()


def test_a_machine_without_a_cpp_compiler_gets_a_reason_and_the_command_to_fix_it(project, monkeypatch):
    settings, layout = project
    monkeypatch.setattr(runtime, "compiler", lambda: "g++ (not found)")
    result = pt2.run(dataclasses.replace(settings, force=True))
    assert result.details["not_made"] == "AOTInductor compiles C++, and this machine has no C++ compiler (g++ (not found))"
    assert "apt-get install g++" in result.details["what_to_do"] and not layout.pt2().exists()
