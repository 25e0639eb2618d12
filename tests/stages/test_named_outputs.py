"""forward() may return a dict, a transformers ModelOutput or a named tuple: its entries are
the spec's outputs by name, through trace, export and parity; a missing name is refused."""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("transformers")

from pipeline.artifacts import checkpoint
from pipeline.artifacts.manifest import Manifest
from pipeline.errors import PipelineError
from pipeline.models import load_spec
from pipeline.settings import Settings
from pipeline.stages import STAGES, train
from tests.helpers import REPO

FIXTURE = REPO / "tests" / "fixtures" / "named_outputs.py"


def model_file(tmp_path, kind: str, outputs: str | None = None):
    text = FIXTURE.read_text().replace('OUTPUT_KIND = "dict"', f"OUTPUT_KIND = {kind!r}")
    if outputs is not None:
        text = text.replace('TensorSpec("score", "float32", ("batch", 1))', outputs)
    _path(tmp_path, kind).write_text(text)
    return _settings(tmp_path, kind)


def _path(folder, kind: str):
    return folder / f"named_{kind}.py"


def _settings(folder, kind: str) -> Settings:
    return Settings(model=str(_path(folder, kind)), root=folder / "project", parity_batch_sizes=(1, 7))


KINDS = ("dict", "model_output", "named_tuple")


def build_named_chains(folder) -> None:
    """Each kind of forward() output through every stage in folder/<kind>: the session's named_chains (tests/background.py)."""
    for kind in KINDS:
        (folder / kind).mkdir()
        settings = model_file(folder / kind, kind)
        for stage in STAGES.values():
            stage(settings)


@pytest.fixture(scope="module")
def named_chains(builds):
    return builds.folder("named_chains")


@pytest.mark.parametrize("kind", KINDS)
def test_outputs_returned_by_name_go_through_in_the_spec_order(named_chains, kind):
    settings = _settings(named_chains / kind, kind)
    manifest = Manifest(settings.root.resolve(), "named_outputs")
    assert manifest.records["parity"].details["passed"] and manifest.records["torchscript"].not_made is None
    spec = load_spec(settings.model)
    model, _ = checkpoint.load_model(manifest, spec, "test")
    x = torch.tensor([[0.5, -0.2, 0.1]])
    inner = model
    with torch.inference_mode():
        hidden = torch.tanh(inner.body(x))
        want = (hidden.sum(dim=1, keepdim=True), inner.head(hidden))
        for got in (model(x), torch.jit.load(str(settings.root / "artifacts" / "named_outputs" / "model.ts"))(x)):
            torch.testing.assert_close(got, want)


def test_a_name_the_model_does_not_return_is_refused_naming_both_sides(tmp_path):
    settings = model_file(tmp_path, "dict", outputs='TensorSpec("logits", "float32", ("batch", 1))')
    train.run(settings)
    with pytest.raises(PipelineError) as info:
        STAGES["trace"](settings)
    assert info.value.stage == "model"
    assert "returns a dict (dict) with ['hidden', 'score', 'y'], without the spec's output(s) ['logits']" in info.value.problem
