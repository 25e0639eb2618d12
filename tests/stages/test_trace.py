import torch

from pipeline.artifacts import checkpoint
from pipeline.artifacts.manifest import Manifest
from pipeline.spec import load_spec
from pipeline.stages import trace


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


def test_retrace_after_retrain_with_other_seed(project):
    from pipeline.settings import Settings
    from pipeline.stages import train

    settings, layout = project
    train.run(Settings(root=settings.root, seed=3))
    assert not trace.run(Settings(root=settings.root, seed=3)).skipped
