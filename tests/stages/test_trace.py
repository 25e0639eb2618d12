import logging
import warnings
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from torch import nn

from pipeline.artifacts import checkpoint
from pipeline.artifacts.manifest import Manifest
from pipeline.errors import PipelineError
from pipeline.models import load_spec
from pipeline.settings import Layout, Settings
from pipeline.stages import export, fresh, parity, trace, train
from tests.helpers import REPO


def test_torchscript_matches_eager(built):
    _, layout = built
    model, _ = checkpoint.load_model(Manifest(layout.root, "simple_nn"), load_spec("simple_nn"), "test")
    ts = torch.jit.load(str(layout.torchscript))
    x = torch.linspace(-20, 20, 101).unsqueeze(1)
    with torch.inference_mode():
        torch.testing.assert_close(ts(x), model(x), atol=1e-6, rtol=1e-6)


def test_deprecation_recorded_not_printed(built):
    _, layout = built
    rec = Manifest(layout.root, "simple_nn").records["torchscript"]
    assert "deprecated" in rec.details["deprecated"]
    assert any("torch.jit.trace" in w for w in rec.details["warnings"])
    assert rec.inputs["checkpoint"] == Manifest(layout.root, "simple_nn").records["checkpoint"].sha256


def test_a_library_logged_warning_is_kept_for_the_manifest_not_printed(capfd):
    import transformers  # noqa: F401  # its handler on the "transformers" logger is what prints

    library, logger = logging.getLogger("transformers"), logging.getLogger("transformers.modeling_utils")
    before = (library.handlers[:], library.propagate)
    assert before[0], "transformers prints through a handler of its own"
    with trace.library_log("transformers") as kept:
        logger.warning("`loss_type=None` was set in the config but it is unrecognized.")
    assert kept == ["transformers: `loss_type=None` was set in the config but it is unrecognized."]
    assert "loss_type" not in capfd.readouterr().err
    assert (library.handlers, library.propagate) == before  # its own handler prints again once tracing is over


def test_retrace_after_retrain_with_other_seed(project):
    settings, layout = project
    x = torch.linspace(-20, 20, 101).unsqueeze(1)
    with torch.inference_mode():
        old = torch.jit.load(str(layout.torchscript))(x)
    train.run(Settings(root=settings.root, seed=3))
    assert not trace.run(Settings(root=settings.root, seed=3)).skipped
    # The new trace carries the new weights: it answers as the retrained eager model, not as the old trace.
    model, _ = checkpoint.load_model(Manifest(layout.root, "simple_nn"), load_spec("simple_nn"), "test")
    with torch.inference_mode():
        got = torch.jit.load(str(layout.torchscript))(x)
        torch.testing.assert_close(got, model(x), atol=1e-6, rtol=1e-6)
    assert not torch.equal(got, old)


# Shape branches are not value branches: what decides is where the bool came from in the
# traced graph, not which file the `if` is in.

FIXTURES = REPO / "tests" / "fixtures"


def traced(fixture: str, root, require: bool = True) -> tuple[Settings, Layout]:
    """Train and trace a fixture model in `root`; the trace stage's error, if any, propagates."""
    path = FIXTURES / f"{fixture}.py"
    settings = Settings(model=str(path), root=root, require_torchscript=require)
    train.run(settings)
    trace.run(settings)
    return settings, Layout(root.resolve(), load_spec(str(path)).name)


def marked_line(fixture: str, mark: str) -> str:
    """`path:line` of the line in a fixture file carrying `mark`."""
    path = FIXTURES / f"{fixture}.py"
    line = next(i for i, text in enumerate(path.read_text().splitlines(), 1) if mark in text)
    return f"{path}:{line}"


def test_value_branch_in_a_library_helper_is_refused_naming_its_line(tmp_path):
    with pytest.raises(PipelineError) as info:
        traced("trace_value_in_library", tmp_path)
    err = info.value
    assert err.stage == "trace" and "trace_value_in_library: forward() branches on a tensor's value" in err.problem
    assert marked_line("trace_detection_lib", "# VALUE BRANCH") in err.problem
    assert "torch.where" in err.fix
    assert not Layout(tmp_path.resolve(), "trace_value_in_library").torchscript.exists()


def test_shape_branch_in_the_model_file_goes_through_and_is_recorded(tmp_path):
    _, layout = traced("trace_shape_branch", tmp_path)
    details = Manifest(layout.root, "trace_shape_branch").records["torchscript"].details
    assert details["shape_branches"] == [marked_line("trace_shape_branch", "# SHAPE BRANCH")]
    assert details["torch_internal_value_checks"] == []


def test_shape_branch_that_flips_at_batch_1_is_caught_by_the_trace_checks(tmp_path):
    with pytest.raises(trace.NotTraceable) as info:
        traced("trace_batch_branch", tmp_path)
    err = info.value
    assert "could not make TorchScript of trace_batch_branch" in err.problem and "answers x [1, 3] unlike eager" in err.problem
    assert marked_line("trace_batch_branch", "x.shape[0] > 1") in err.fix and "torch.where" in err.fix


def test_without_torchscript_the_chain_goes_on_and_says_why(tmp_path):
    """By default a model TorchScript cannot hold is recorded as not made: no model.ts, a note, parity skips it."""
    (tmp_path / "artifacts" / "trace_batch_branch").mkdir(parents=True)
    stale = Layout(tmp_path.resolve(), "trace_batch_branch").torchscript
    stale.write_bytes(b"an older model.ts")
    settings, layout = traced("trace_batch_branch", tmp_path, require=False)
    record = Manifest(layout.root, "trace_batch_branch").records["torchscript"]
    assert "answers x [1, 3] unlike eager" in record.not_made and "--require-torchscript" in record.details["what_to_do"]
    assert not layout.torchscript.exists(), "an older model.ts would be served or timed in place of what was built"
    assert fresh.not_made_note(layout.torchscript).is_file() and record.path.endswith("model.ts.not-made.json")
    assert len((layout.reports / "trace.log").read_text()) > len(record.not_made)  # the tracer's full text
    again = trace.run(settings)
    assert again.skipped and again.details["not_made"] == record.not_made
    with pytest.raises(trace.NotTraceable, match="unlike eager"):
        trace.run(replace(settings, require_torchscript=True))  # asked for, the recorded reason stops the chain
    export.run(settings)
    loaders, skipped = parity.engines(load_spec(settings.model), Manifest(layout.root, "trace_batch_branch"))
    assert "torchscript" not in [name for name, _ in loaders]
    assert skipped[0]["engine"] == "torchscript" and skipped[0]["reason"] == f"not made: {record.not_made}"


def test_advice_never_points_into_an_installed_library():
    site = str(Path(torch.__file__).resolve().parent.parent)
    places = [f"{site}/transformers/masking_utils.py:868", f"{site}/transformers/integrations/sdpa_attention.py:148"]
    model = nn.Sequential(nn.Linear(2, 2))
    fix = trace.untraceable_fix(model, places)
    assert "inside transformers" in fix and "not in your code" in fix and "torch.where" not in fix
    assert trace.owner(places[0]) == "transformers" and trace.owner(__file__) is None


class _OnWeight(nn.Module):
    def __init__(self):
        super().__init__()
        self.linear = nn.Linear(3, 3)

    def forward(self, x):
        return x if self.linear.weight.sum() > 0 else -x


class _OnBuffer(nn.Module):
    def __init__(self):
        super().__init__()
        self.register_buffer("scale", torch.ones(3))

    def forward(self, x):
        return x if (self.scale > 0).all() else -x


@pytest.mark.parametrize(
    ("model", "on_value"),
    [
        pytest.param(lambda x: x if x.sum() > 0 else -x, True, id="input data"),
        pytest.param(_OnWeight(), True, id="parameter"),
        pytest.param(_OnBuffer(), True, id="buffer"),
        pytest.param(lambda x: x if torch.rand(()) > 0.5 else -x, True, id="random"),
        pytest.param(lambda x: x if x.shape[0] * 2 - 1 > 0 else -x, False, id="arithmetic on a size"),
        pytest.param(lambda x: x if (torch.arange(x.shape[0]) < 10).all() else -x, False, id="tensor built from a size"),
        pytest.param(lambda x: x if torch.tensor(3) > 2 else -x, False, id="constant"),
    ],
)
def test_watch_branches_tells_a_value_from_a_shape_by_its_provenance(model, on_value):
    with warnings.catch_warnings(), trace.watch_branches() as branches:
        warnings.simplefilter("ignore")
        torch.jit.trace(model, torch.ones(3), check_trace=False)
    assert len(branches.values() if on_value else branches.shapes()) == 1
    assert not (branches.shapes() if on_value else branches.values())


def test_watch_branches_sees_torch_own_value_checks_and_shape_checks():
    """torch.distributions' validate_args asserts on the sample's values; that is a value, even inside torch."""

    def log_prob(x):
        return torch.distributions.Normal(x, torch.ones_like(x), validate_args=True).log_prob(x)

    with warnings.catch_warnings(), trace.watch_branches() as branches:
        warnings.simplefilter("ignore")
        torch.jit.trace(log_prob, torch.ones(3), check_trace=False)
    assert branches.values() and all("/torch/distributions/" in place for place in branches.values())


def test_watch_branches_restores_tensor_bool_after_an_error():
    with pytest.raises(ValueError), trace.watch_branches():
        raise ValueError("inside")
    assert "__bool__" not in torch.Tensor.__dict__ and bool(torch.tensor(1))


@pytest.mark.slow
@pytest.mark.parametrize("fixture", ["trace_bert_tiny", "trace_gpt2_tiny"])
def test_transformers_sdpa_shape_branches_go_through_and_match_eager(tmp_path, fixture):
    """BertModel and GPT2LMHeadModel (default sdpa attention, 2-D mask) compare only shapes while tracing."""
    pytest.importorskip("transformers")
    _, layout = traced(fixture, tmp_path)
    details = Manifest(layout.root, fixture).records["torchscript"].details
    places = details["shape_branches"]
    assert any("transformers/integrations/sdpa_attention.py" in p for p in places), places
    assert any("transformers/masking_utils.py" in p for p in places), places
    # The trace holds at a size it was not traced at, padding included.
    spec = load_spec(str(FIXTURES / f"{fixture}.py"))
    model, _ = checkpoint.load_model(Manifest(layout.root, fixture), spec, "test")
    ids = torch.randint(0, 100, (2, 5))
    mask = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 0, 0, 0]])
    with torch.inference_mode():
        torch.testing.assert_close(torch.jit.load(str(layout.torchscript))(ids, mask), model(ids, mask), atol=1e-5, rtol=1e-4)


def test_a_large_module_is_written_to_its_file_directly(project, monkeypatch):
    """Past IN_MEMORY_BYTES the module is not serialised in memory first; the file still loads and matches."""
    from dataclasses import replace

    settings, layout = project
    monkeypatch.setattr(trace, "IN_MEMORY_BYTES", 0)
    result = trace.run(replace(settings, force=True))
    assert not result.skipped
    reloaded = torch.jit.load(str(layout.torchscript))
    with torch.inference_mode():
        assert torch.allclose(reloaded(torch.tensor([[5.0]])), torch.tensor([[11.0]]), atol=0.05)
    assert not [p for p in layout.artifacts.iterdir() if p.name.startswith(".model.ts")]
