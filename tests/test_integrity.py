"""A changed, truncated or missing artifact is refused by the next stage, before parsing."""

import pytest

from pipeline import export, package, parity, trace
from pipeline.errors import IntegrityError
from pipeline.manifest import Manifest


def _flip_byte(path, offset=None):
    data = bytearray(path.read_bytes())
    i = len(data) // 2 if offset is None else offset
    data[i] ^= 0xFF
    path.write_bytes(bytes(data))


def _truncate(path):
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


@pytest.mark.parametrize("damage", [_flip_byte, _truncate], ids=["byte-flip", "truncate"])
@pytest.mark.parametrize(
    "artifact, next_stage",
    [("checkpoint", trace.run), ("checkpoint", export.run), ("torchscript", parity.run), ("onnx", parity.run), ("onnx", package.run)],
    ids=["checkpoint->trace", "checkpoint->export", "torchscript->parity", "onnx->parity", "onnx->package"],
)
def test_damaged_artifact_refused(project, damage, artifact, next_stage):
    settings, layout = project
    path = layout.root / Manifest(layout.root, "simple_nn").records[artifact].path
    damage(path)
    with pytest.raises(IntegrityError, match=r"does not match the manifest.*refusing to load it") as err:
        next_stage(settings)
    assert "--force" in str(err.value)


def test_missing_artifact_refused(project):
    settings, layout = project
    layout.onnx.unlink()
    with pytest.raises(IntegrityError, match=r"model.onnx is missing .*export stage"):
        parity.run(settings)


def test_stage_before_its_inputs_exist(tmp_path):
    from pipeline.stage import Settings

    with pytest.raises(IntegrityError, match=r"(?s)no checkpoint recorded.*make export"):
        trace.run(Settings(root=tmp_path))


def test_unreadable_manifest(project):
    settings, layout = project
    (layout.artifacts / "manifest.json").write_text("{ not json")
    with pytest.raises(IntegrityError, match=r"not a readable manifest.*\n.*rm .*manifest.json"):
        parity.run(settings)


def test_rerun_rebuilds_a_corrupted_artifact(project):
    """`make export` after damage redoes the damaged stage instead of failing forever."""
    from pipeline import train

    settings, layout = project
    _flip_byte(layout.checkpoint, offset=len(layout.checkpoint.read_bytes()) - 3)
    result = train.run(settings)
    assert not result.skipped
    assert trace.run(settings).skipped  # deterministic training gives the same bytes back
