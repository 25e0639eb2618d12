import json

import torch
from safetensors import safe_open
from safetensors.torch import load_file

from pipeline.artifacts import checkpoint, files
from pipeline.artifacts.manifest import Manifest
from pipeline.models import load_spec
from pipeline.models.simple_nn import SimpleNN
from pipeline.settings import Settings
from pipeline.stages import train


def test_trained_model_predicts_f5(built):
    settings, layout = built
    model, _ = checkpoint.load_model(Manifest(layout.root, "simple_nn"), load_spec("simple_nn"), "test")
    with torch.inference_mode():
        y = model(torch.tensor([[5.0], [-3.0], [0.0]]))
    assert abs(y[0].item() - 11.0) < 0.05
    assert abs(y[1].item() - (-5.0)) < 0.1
    assert abs(y[2].item() - 1.0) < 0.1


def test_checkpoint_is_safetensors_with_model_args(built):
    _, layout = built
    with safe_open(str(layout.checkpoint), framework="pt") as f:
        meta = f.metadata()
        keys = set(f.keys())
    assert json.loads(meta["pipeline"]) == {"model": "simple_nn", "model_args": {"hidden": 16}}
    assert keys == set(SimpleNN().state_dict())


def test_manifest_records_training(built):
    _, layout = built
    rec = Manifest(layout.root, "simple_nn").records["checkpoint"]
    assert rec.stage == "train"
    assert rec.details["metrics"]["final_loss"] < 1e-2
    assert abs(rec.details["metrics"]["f(5)"] - 11.0) < 0.05
    assert rec.environment["torch"] == torch.__version__


def test_training_is_deterministic(built, tmp_path):
    _, layout = built
    train.run(Settings(root=tmp_path))
    again = Manifest(tmp_path, "simple_nn").records["checkpoint"].sha256
    assert again == Manifest(layout.root, "simple_nn").records["checkpoint"].sha256


def test_skip_when_unchanged_and_force_redoes(project):
    settings, layout = project
    before = layout.checkpoint.stat().st_mtime_ns
    assert train.run(settings).skipped
    assert layout.checkpoint.stat().st_mtime_ns == before
    forced = train.run(Settings(root=settings.root, force=True))
    assert not forced.skipped
    assert layout.checkpoint.stat().st_mtime_ns != before


def test_different_seed_retrains(project):
    settings, layout = project
    before = Manifest(layout.root, "simple_nn").records["checkpoint"].sha256
    old = load_file(layout.checkpoint)
    result = train.run(Settings(root=settings.root, seed=1))
    assert not result.skipped
    # The seed reaches the training, not only the cache key: other initial weights, other weights.
    record = Manifest(layout.root, "simple_nn").records["checkpoint"]
    assert record.sha256 != before and record.sha256 == files.sha256_file(layout.checkpoint)
    new = load_file(layout.checkpoint)
    assert new.keys() == old.keys() and not any(torch.equal(new[k], old[k]) for k in new)
