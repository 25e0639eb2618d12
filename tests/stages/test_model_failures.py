"""The failures users meet with their own models: each a clear error naming the stage, the model and a fix.

The bad models live in tests/fixtures/ as the files a user would write; nothing is mocked.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
from dataclasses import replace
from pathlib import Path

import pytest

from pipeline import cli
from pipeline.artifacts.manifest import Manifest
from pipeline.errors import ParityError, PipelineError, SpecError
from pipeline.models import load_spec
from pipeline.settings import Layout, Settings
from pipeline.stages import export, parity, trace, train
from tests.helpers import REPO

FIXTURES = REPO / "tests" / "fixtures"


def fixture_settings(name: str, root: Path, **kw) -> tuple[Settings, Layout]:
    path = FIXTURES / f"{name}.py"
    return Settings(model=str(path), root=root, **kw), Layout(root.resolve(), load_spec(str(path)).name)


def branch_line() -> int:
    lines = (FIXTURES / "branchy_model.py").read_text().splitlines()
    return next(i for i, line in enumerate(lines, 1) if "# BRANCH" in line)


def artifacts_of(layout: Layout) -> dict[str, str]:
    """Every file in the model's artifacts folder and its sha256, temporary files included."""
    from pipeline.artifacts.files import sha256_file

    return {p.name: sha256_file(p) for p in sorted(layout.artifacts.iterdir()) if p.is_file()}


def test_unsupported_op_fails_export_with_the_op_and_leaves_earlier_artifacts(tmp_path):
    settings, layout = fixture_settings("unsupported_op_model", tmp_path)
    train.run(settings)
    trace.run(settings)
    before = artifacts_of(layout)
    with pytest.raises(PipelineError) as info:
        export.run(settings)
    err = info.value
    assert err.stage == "export"
    assert "could not export unsupported_op" in err.problem
    assert "No ONNX function found" in err.problem and "prims.zeta" in err.problem
    assert "has no ONNX translation" in err.fix and "custom_translation_table" in err.fix
    # Nothing half-written: the folder holds exactly what it held, and what was recorded still verifies.
    assert artifacts_of(layout) == before
    assert not layout.onnx.exists()
    manifest = Manifest(layout.root, "unsupported_op")
    assert "onnx" not in manifest.records
    for key in ("checkpoint", "torchscript"):
        manifest.verified(key, "test")


def test_data_dependent_branch_fails_export_naming_the_line(tmp_path):
    settings, layout = fixture_settings("branchy_model", tmp_path)
    train.run(settings)
    before = artifacts_of(layout)
    with pytest.raises(PipelineError) as info:
        export.run(settings)  # straight to export: the trace stage would refuse it first
    err = info.value
    assert err.stage == "export" and "could not export branchy" in err.problem
    assert "GuardOnDataDependentSymNode" in err.problem
    assert f'branchy_model.py", line {branch_line()}, in forward: `if x.sum() > 0:' in err.problem
    assert "data-dependent" in err.fix and "torch.where" in err.fix and "torch.cond" in err.fix
    assert artifacts_of(layout) == before


def test_trace_refuses_a_value_dependent_branch_and_nothing_ships(tmp_path):
    settings, layout = fixture_settings("branchy_model", tmp_path)
    train.run(settings)
    with pytest.raises(PipelineError) as info:
        trace.run(settings)
    err = info.value
    assert err.stage == "trace" and err.problem.startswith("branchy: forward() branches on a tensor's value")
    assert f"branchy_model.py:{branch_line()}" in err.problem
    assert "torch.where" in err.fix
    assert not layout.torchscript.exists()
    assert cli.main(["all", "--model", settings.model, "--root", str(tmp_path)]) == 1
    assert not layout.mar.exists()


@pytest.mark.parametrize("fastpath", [True, False])
def test_torch_internal_shape_assertions_are_recorded_not_refused(tmp_path, fastpath):
    """Attention's own `if tensor != ...: raise` lines meet the tracer; only the user's code is refused."""
    import torch

    settings, layout = fixture_settings("attention_model", tmp_path)
    torch.backends.mha.set_fastpath_enabled(fastpath)
    try:
        train.run(settings)
        trace.run(settings)
        export.run(settings)
        assert torch.backends.mha.get_fastpath_enabled() is fastpath  # restored after trace and export
    finally:
        torch.backends.mha.set_fastpath_enabled(True)
    details = Manifest(layout.root, "attention_model").records["torchscript"].details
    internal = details["torch_internal_value_checks"]
    assert internal and all("/torch/" in place for place in internal)
    assert parity.run(settings).details["passed"]


def test_export_falls_back_by_default_and_stops_when_told_not_to(tmp_path):
    settings, layout = fixture_settings("cdist_model", tmp_path)
    train.run(settings)
    trace.run(settings)
    with pytest.raises(PipelineError) as info:
        export.run(replace(settings, exporter_fallback=False))
    assert "aten._cdist_forward" in info.value.problem and "without --no-exporter-fallback" in info.value.fix
    assert "(the exporter's full text: reports/cdist_model/export.log)" in info.value.problem
    assert "Traceback" in (layout.reports / "export.log").read_text()
    assert not layout.onnx.exists()

    fallback = settings  # the default
    result = export.run(fallback)
    assert "made by the TorchScript-based exporter, because torch.onnx.export could not export" in result.summary
    record = Manifest(layout.root, "cdist_model").records["onnx"]
    assert record.details["exporter"].startswith("TorchScript-based") and "cdist" in record.details["dynamo_failure"]
    assert record.settings["exporter_fallback"] is True
    assert parity.run(fallback).details["passed"]  # the same gate holds the fallback's graph


@pytest.mark.slow
def test_parity_failure_names_the_output_batch_and_worst_error(tmp_path):
    settings, layout = fixture_settings("drifting_model", tmp_path, parity_batch_sizes=(1, 7))
    for stage in (train, trace, export):
        stage.run(settings)
    with pytest.raises(ParityError) as info:
        parity.run(settings)
    err = info.value
    # `y` agrees everywhere; only `drift` is off, by 1e-3, in ONNX Runtime.
    assert err.stage == "parity" and err.problem.startswith("drifting: ")
    assert "onnxruntime-cpu output 'drift' at random b=7 (batch 7): max abs error 0.001" in err.problem
    assert "reports/drifting/parity.json" in err.problem
    assert "--atol/--rtol" in err.fix
    # The report is there to read, and `package` refuses to ship.
    assert (layout.reports / "parity.md").read_text().startswith("# Parity: drifting — FAIL")
    assert cli.main(["package", "--model", settings.model, "--root", str(tmp_path)]) == 1
    assert not layout.mar.exists()


def _spec_file(tmp_path: Path, body: str) -> str:
    path = tmp_path / "my_model.py"
    path.write_text(
        textwrap.dedent("""\
        import numpy as np
        from torch import nn
        from pipeline.spec import ModelSpec, TensorSpec, Tolerance, TrainResult

        def build(args):
            return nn.Linear(3, 1)

        def train(seed):
            return TrainResult(nn.Linear(3, 1).state_dict(), {}, {})

        def sample_inputs(batch, rng):
            return {"x": rng.uniform(-1, 1, size=(batch, 3)).astype(np.float32)}

        X = TensorSpec("x", "float32", ("batch", 3))
        Y = TensorSpec("y", "float32", ("batch", 1))
        """)
        + textwrap.dedent(body)
    )
    return str(path)


BAD_SPECS = [
    (
        "missing field",
        "SPEC = ModelSpec(name='m', inputs=(X,), outputs=(Y,), build=build, train=train)\n",
        r"failed to import \(line \d+: SPEC = ModelSpec.*missing 1 required positional argument: 'sample_inputs'",
        "ModelSpec needs name, inputs, outputs, build, train, sample_inputs; optional: edge_inputs, parity_cases",
    ),
    (
        "misspelt field",
        "SPEC = ModelSpec(name='m', input=(X,), outputs=(Y,), build=build, train=train, sample_inputs=sample_inputs)\n",
        r"unexpected keyword argument 'input'",
        "did you mean 'inputs'?",
    ),
    (
        "misspelt TensorSpec field",
        "SPEC = ModelSpec(name='m', inputs=(TensorSpec('x', 'int64', ('batch',), lo=0),), outputs=(Y,),"
        " build=build, train=train, sample_inputs=sample_inputs)\n",
        r"unexpected keyword argument 'lo'",
        "did you mean 'low'?",
    ),
    (
        "one TensorSpec, not a tuple",
        "SPEC = ModelSpec(name='m', inputs=X, outputs=(Y,), build=build, train=train, sample_inputs=sample_inputs)\n",
        r"inputs is one TensorSpec, not a tuple of them",
        "trailing comma",
    ),
    (
        "output axis no input has",
        "SPEC = ModelSpec(name='m', inputs=(X,), outputs=(TensorSpec('y', 'float32', ('batch', 'seq')),),"
        " build=build, train=train, sample_inputs=sample_inputs)\n",
        r"output y has dynamic axis 'seq' that no input has",
        "must come from the inputs'",
    ),
    (
        "bad dimension",
        "SPEC = ModelSpec(name='m', inputs=(TensorSpec('x', 'float32', ('batch', 0)),), outputs=(Y,),"
        " build=build, train=train, sample_inputs=sample_inputs)\n",
        r"has the dimension 0",
        "a positive int (fixed) or an axis name",
    ),
    (
        "tolerance as a number",
        "SPEC = ModelSpec(name='m', inputs=(X,), outputs=(Y,), build=build, train=train, sample_inputs=sample_inputs, tolerance=1e-3)\n",
        r"tolerance is 0.001, not a Tolerance",
        "Tolerance(atol=",
    ),
    (
        "range upside down",
        "SPEC = ModelSpec(name='m', inputs=(TensorSpec('x', 'int64', ('batch',), low=9, high=0),), outputs=(Y,),"
        " build=build, train=train, sample_inputs=sample_inputs)\n",
        r"x has low 9 > high 0",
        "inclusive bounds",
    ),
    (
        "train not a function",
        "SPEC = ModelSpec(name='m', inputs=(X,), outputs=(Y,), build=build, train='train.py', sample_inputs=sample_inputs)\n",
        r"train is 'train.py', not a function",
        "SPEC = ModelSpec(name='my_model'",
    ),
]


@pytest.mark.parametrize("body, problem, fix", [c[1:] for c in BAD_SPECS], ids=[c[0] for c in BAD_SPECS])
def test_interface_file_with_a_missing_or_wrong_field_shows_the_fix(tmp_path, body, problem, fix):
    path = _spec_file(tmp_path, body)
    with pytest.raises(SpecError) as info:
        load_spec(path)
    assert info.value.stage == "model"
    assert path in info.value.problem
    assert __import__("re").search(problem, info.value.problem), info.value.problem
    assert fix in info.value.fix, info.value.fix


def _trained(path: str, tmp_path: Path) -> Settings:
    settings = Settings(model=path, root=tmp_path / "project")
    train.run(settings)
    return settings


def test_sample_inputs_of_the_wrong_dtype_are_refused_by_the_stage_that_uses_them(tmp_path):
    path = _spec_file(
        tmp_path,
        """\
        def sample_inputs_f64(batch, rng):
            return {"x": rng.uniform(-1, 1, size=(batch, 3))}

        SPEC = ModelSpec(name='m', inputs=(X,), outputs=(Y,), build=build, train=train, sample_inputs=sample_inputs_f64)
        """,
    )
    settings = _trained(path, tmp_path)
    with pytest.raises(SpecError, match=r"\[trace\] m: sample_inputs\(4, rng\): x is float64, declared float32") as info:
        trace.run(settings)
    assert "astype(np.float32)" in info.value.fix


def test_export_example_with_a_dynamic_axis_the_size_of_the_batch_is_refused(tmp_path):
    path = _spec_file(
        tmp_path,
        """\
        def tokens(batch, rng):
            return {"t": rng.integers(0, 5, size=(batch, batch)).astype(np.int64)}

        SPEC = ModelSpec(name='m', inputs=(TensorSpec('t', 'int64', ('batch', 'seq')),),
                         outputs=(TensorSpec('y', 'float32', ('batch', 'seq', 2)),),
                         build=lambda args: nn.Embedding(5, 2), train=lambda seed: TrainResult(nn.Embedding(5, 2).state_dict(), {}, {}),
                         sample_inputs=tokens)
        """,
    )
    settings = _trained(path, tmp_path)
    with pytest.raises(PipelineError, match=r"\[export\] m: the export example has size 4 on both dynamic axes 'batch' and 'seq'") as info:
        export.run(settings)
    assert "each axis a different size" in info.value.fix


def test_command_line_prints_the_spec_error_and_fix_without_a_traceback(tmp_path):
    path = _spec_file(tmp_path, "SPEC = ModelSpec(name='m', inputs=(X,), outputs=(Y,), build=build, train=train)\n")
    result = subprocess.run(
        [sys.executable, "-m", "pipeline", "train", "--model", path, "--root", str(tmp_path)], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 1
    assert f"error: [model] {path} failed to import (line 16: SPEC = ModelSpec(" in result.stderr
    assert "what to do: ModelSpec needs name, inputs, outputs, build, train, sample_inputs" in result.stderr
    assert "Traceback" not in result.stderr
