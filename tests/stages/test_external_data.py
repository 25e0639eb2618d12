"""A model whose weights live in model.onnx.data, through export, parity, package and the archive.

The model is tests/fixtures/wide_mlp.py (2.4 GB) made small (WIDTH 16), with export's
threshold at 0 so the external-data path runs on kilobytes.
"""

from __future__ import annotations

import hashlib
import json
import zipfile
from dataclasses import replace

import numpy as np
import onnx
import pytest

from pipeline.artifacts import archive, files
from pipeline.artifacts.manifest import Manifest
from pipeline.artifacts.names import ARCHIVE_DATA, ARCHIVE_MANIFEST, ARCHIVE_MEMBERS, ARCHIVE_MODEL, EXTERNAL_DATA, MAR, ONNX
from pipeline.artifacts.version import content_version
from pipeline.errors import IntegrityError, PipelineError
from pipeline.runtimes.session import create_session
from pipeline.settings import Layout, Settings
from pipeline.stages import export, package, parity, variants
from tests.helpers import archive_handler, copy_root, external_data_project, small_wide_mlp


@pytest.fixture(scope="module")
def external(tmp_path_factory) -> tuple[Settings, Layout]:
    """The built project. Do not modify it."""
    return external_data_project(tmp_path_factory.mktemp("external") / "project")


@pytest.fixture
def copy(external, tmp_path) -> tuple[Settings, Layout]:
    """A private copy of the built project, free to damage."""
    settings, layout = external
    root = tmp_path / "project"
    copy_root(layout.root, root)
    model = small_wide_mlp(root / "models")
    return replace(settings, model=str(model), root=root), Layout(root.resolve(), "wide_mlp")


def data_of(layout: Layout):
    return layout.artifacts / "model.onnx.data"


def external_locations(path) -> set[str]:
    model = onnx.load(str(path), load_external_data=False)
    return {e.value for t in model.graph.initializer for e in t.external_data if e.key == "location"}


def test_export_writes_the_weights_beside_the_model_under_a_fixed_name(external):
    _, layout = external
    assert external_locations(layout.onnx) == {"model.onnx.data"}
    model = onnx.load(str(layout.onnx), load_external_data=False)
    weights = [t for t in model.graph.initializer if t.name.endswith("weight")]
    assert weights and all(t.data_location == onnx.TensorProto.EXTERNAL for t in weights)
    assert sorted(p.name for p in layout.artifacts.iterdir()) == [
        "checkpoint.safetensors",
        "manifest.json",
        "model.onnx",
        "model.onnx.data",
        "model.ts",
    ]  # no temporary file, no data file named after one
    onnx.checker.check_model(str(layout.onnx), full_check=True)


def test_manifest_records_the_data_file_with_its_hash_and_which_storage(external):
    _, layout = external
    rec = Manifest(layout.root, "wide_mlp").records[ONNX]
    assert rec.details["weights"] == "external"
    assert rec.details["weight_bytes"] > 0 and rec.settings["external_data_threshold"] == 0
    data = rec.details[EXTERNAL_DATA]
    assert data["path"] == "artifacts/wide_mlp/model.onnx.data"
    assert data["sha256"] == files.sha256_file(data_of(layout))
    assert data["bytes"] == data_of(layout).stat().st_size


def test_onnx_runtime_reads_the_pair_and_answers_as_eager(external):
    settings, layout = external
    from pipeline.artifacts import checkpoint
    from pipeline.models import load_spec

    spec = load_spec(settings.model)
    model, _ = checkpoint.load_model(Manifest(layout.root, "wide_mlp"), spec, "test")
    x = np.random.default_rng(3).standard_normal((5, 16)).astype(np.float32)
    (got,) = create_session(layout.onnx).run(["y"], {"x": x})
    import torch

    with torch.no_grad():
        want = model(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(got, want, atol=1e-5, rtol=1e-4)


def test_under_the_threshold_the_weights_stay_embedded_and_the_old_data_file_goes(copy):
    settings, layout = copy
    result = export.run(settings)  # the default threshold: 2 GiB minus headroom
    assert not result.skipped
    assert not data_of(layout).exists()
    assert external_locations(layout.onnx) == set()
    rec = Manifest(layout.root, "wide_mlp").records[ONNX]
    assert rec.details["weights"] == "embedded" and EXTERNAL_DATA not in rec.details
    assert export.run(settings).skipped


def test_each_retry_replaces_the_pair_and_leaves_nothing_behind(copy):
    settings, layout = copy
    for _ in range(2):
        export.run(replace(settings, force=True), external_data_threshold=0)
    assert not [p for p in layout.artifacts.iterdir() if p.name.startswith(".")]
    Manifest(layout.root, "wide_mlp").verified(ONNX, "test")


def test_a_failed_export_keeps_the_previous_pair_and_leaves_no_data_file(copy, monkeypatch):
    settings, layout = copy
    before = files.sha256_file(layout.onnx), files.sha256_file(data_of(layout))

    def broken(path, spec):
        assert (path.parent / "model.onnx.data").is_file()  # checked beside its data, under their final names
        raise PipelineError("export", "the check failed", "nothing")

    monkeypatch.setattr(export, "checked_graph", broken)
    with pytest.raises(PipelineError, match="the check failed"):
        export.run(replace(settings, force=True), external_data_threshold=0)
    assert (files.sha256_file(layout.onnx), files.sha256_file(data_of(layout))) == before
    assert not [p for p in layout.artifacts.iterdir() if p.name.startswith(".")]


def test_a_killed_writers_staging_folder_is_swept_by_the_next_export(copy):
    import subprocess
    import sys

    settings, layout = copy
    dead = int(subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True).stdout)
    staging = layout.artifacts / f".model.onnx-{dead}.abcd1234"
    staging.mkdir()
    (staging / "model.onnx.data").write_bytes(b"\0" * 1024)
    legacy = layout.artifacts / f".model.onnx.{dead}.k2j4h6g8.tmp.data"  # what program.save left before
    legacy.write_bytes(b"\0" * 1024)
    export.run(replace(settings, force=True), external_data_threshold=0)
    assert not staging.exists() and not legacy.exists()


@pytest.mark.parametrize("stage", [parity.run, package.run], ids=["parity", "package"])
def test_a_changed_data_file_is_refused_by_the_next_stage(copy, stage):
    settings, layout = copy
    data = bytearray(data_of(layout).read_bytes())
    data[len(data) // 2] ^= 0xFF
    data_of(layout).write_bytes(bytes(data))
    with pytest.raises(IntegrityError, match=r"model.onnx.data does not match the manifest.*refusing to load it") as err:
        stage(replace(settings, force=True))
    assert "python -m pipeline export" in str(err.value)


def test_a_missing_data_file_is_refused(copy):
    settings, layout = copy
    data_of(layout).unlink()
    with pytest.raises(IntegrityError, match=r"model.onnx.data is missing .*export stage"):
        parity.run(replace(settings, force=True))


def test_the_archive_holds_the_data_file_stored_and_verified(external):
    _, layout = external
    manifest = Manifest(layout.root, "wide_mlp")
    with zipfile.ZipFile(layout.mar) as zf:
        assert set(zf.namelist()) == ARCHIVE_MEMBERS | {ARCHIVE_DATA}
        assert zf.getinfo(ARCHIVE_DATA).compress_type == zipfile.ZIP_STORED
        assert zf.read(ARCHIVE_DATA) == data_of(layout).read_bytes()
    info = archive.inspect_archive(layout.mar, manifest.records[ONNX].sha256, manifest.records[ONNX].details[EXTERNAL_DATA]["sha256"])
    assert info["data_sha256"] == files.sha256_file(data_of(layout))
    assert manifest.records[MAR].inputs["onnx_data"] == info["data_sha256"]
    archive.verified_archive(manifest, None, "test")


def test_the_archives_data_member_is_hashed_in_blocks_not_read_whole(external, monkeypatch):
    _, layout = external
    original = zipfile.ZipFile.read

    def read(self, name, *args):
        assert name != ARCHIVE_DATA, "the data member was read into memory whole"
        return original(self, name, *args)

    monkeypatch.setattr(zipfile.ZipFile, "read", read)
    assert archive.inspect_archive(layout.mar)["data_sha256"]


def _rebuilt(src, dst, edit):
    """A copy of the archive src with edit(name, data) applied to each member (None drops it), its version
    restamped from its new members: a well-formed archive, as another build would make it."""
    with zipfile.ZipFile(src) as zin:
        members = {info: edit(info.filename, zin.read(info)) for info in zin.infolist()}
    members = {info: data for info, data in members.items() if data is not None}
    hashes = {info.filename: hashlib.sha256(data).hexdigest() for info, data in members.items() if info.filename != ARCHIVE_MANIFEST}
    with zipfile.ZipFile(dst, "w") as zout:
        for info, data in members.items():
            if info.filename == ARCHIVE_MANIFEST:
                manifest = json.loads(data)
                manifest["model"]["modelVersion"] = content_version(hashes)
                data = json.dumps(manifest).encode()
            zout.writestr(info, data)
    return dst


def test_an_archive_with_other_weights_is_refused(external, tmp_path):
    _, layout = external
    rec = Manifest(layout.root, "wide_mlp").records[ONNX]
    other = _rebuilt(layout.mar, tmp_path / "other.mar", lambda n, d: d[::-1] if n == ARCHIVE_DATA else d)
    archive.inspect_archive(other)  # a well-formed archive on its own
    with pytest.raises(IntegrityError, match="holds a model.onnx.data other than the verified one"):
        archive.inspect_archive(other, rec.sha256, rec.details[EXTERNAL_DATA]["sha256"])
    with pytest.raises(IntegrityError, match="holds a model.onnx.data other than the verified one"):
        archive.inspect_archive(layout.mar, rec.sha256, None)  # the verified model embeds its weights


def test_an_archive_missing_the_data_or_carrying_it_for_nothing_is_refused(external, built, tmp_path):
    _, layout = external
    without = _rebuilt(layout.mar, tmp_path / "without.mar", lambda n, d: None if n == ARCHIVE_DATA else d)
    with pytest.raises(IntegrityError, match=r"keeps its weights in 'model.onnx.data', which is not beside it"):
        archive.inspect_archive(without)
    embedded = built[1].mar
    extra = _rebuilt(embedded, tmp_path / "extra.mar", lambda n, d: d)
    with zipfile.ZipFile(extra, "a") as zf:
        zf.writestr(ARCHIVE_DATA, b"\0" * 64)
    with pytest.raises(IntegrityError, match="holds model.onnx.data, but its model.onnx keeps its weights embedded"):
        archive.inspect_archive(extra)
    short = _rebuilt(layout.mar, tmp_path / "short.mar", lambda n, d: d[:-4] if n == ARCHIVE_DATA else d)
    with pytest.raises(IntegrityError, match="the data file is truncated"):
        archive.inspect_archive(short)


def test_the_torchserve_handler_loads_the_pair_from_the_unpacked_archive(external, tmp_path):

    _, layout = external
    module, ctx = archive_handler(layout.mar, tmp_path / "model_dir")
    assert (tmp_path / "model_dir" / ARCHIVE_DATA).is_file()
    x = np.random.default_rng(5).standard_normal((3, 16)).astype(np.float32)
    [body] = module.handle([{"body": json.dumps({"x": x.tolist()}).encode()}], ctx)
    (want,) = create_session(layout.onnx).run(["y"], {"x": x})
    np.testing.assert_allclose(np.array(json.loads(body)["y"], dtype=np.float32), want, atol=1e-6)


def test_the_ray_replica_loads_the_pair_from_the_verified_archive(external, tmp_path):
    from pipeline.serving.ray import app as ray_app

    _, layout = external
    sha = Manifest(layout.root, "wide_mlp").records[MAR].sha256
    options = ray_app.RayAppOptions(archive=str(layout.mar), sha256=sha, token_file="unused")
    predictor, _, _ = ray_app.load(options, tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([ARCHIVE_MODEL, ARCHIVE_DATA, "model.mar"])
    x = np.random.default_rng(6).standard_normal((3, 16)).astype(np.float32)
    [answer] = predictor.answer([{"body": json.dumps({"x": x.tolist()}).encode()}])
    assert answer.status == 200
    (want,) = create_session(layout.onnx).run(["y"], {"x": x})
    np.testing.assert_allclose(np.array(json.loads(answer.body)["y"], dtype=np.float32), want, atol=1e-6)


def test_variants_refuse_a_model_with_external_data_and_say_so(copy):
    settings, _ = copy
    with pytest.raises(PipelineError, match="external data; the variants are made only from models with their weights embedded"):
        variants.build(settings, "int8")


def test_the_torchscript_based_fallback_writes_the_same_pair(external, tmp_path):
    """It scatters one file per tensor for a model over 2 GiB: it writes into its own folder, saved again as one pair."""
    from pipeline.artifacts import checkpoint
    from pipeline.models import load_spec
    from pipeline.stages.capture import example_args

    settings, layout = external
    spec = load_spec(settings.model)
    model, _ = checkpoint.load_model(Manifest(layout.root, "wide_mlp"), spec, "test")
    with files.atomic_files(tmp_path / "model.onnx.data", tmp_path / "model.onnx") as (_, staged):
        export.fallback_to_external(model, spec, example_args(spec, 4, 0, "test"), staged)
        export.check_graph(staged, spec)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.onnx", "model.onnx.data"]
    assert external_locations(tmp_path / "model.onnx") == {"model.onnx.data"}
    x = np.ones((2, 16), dtype=np.float32)
    np.testing.assert_allclose(
        create_session(tmp_path / "model.onnx").run(["y"], {"x": x})[0], create_session(layout.onnx).run(["y"], {"x": x})[0], atol=1e-6
    )
