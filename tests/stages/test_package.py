import hashlib
import json
import zipfile

import pytest
import yaml

from pipeline.artifacts import archive
from pipeline.artifacts.manifest import Manifest
from pipeline.errors import IntegrityError
from pipeline.models import load_spec
from pipeline.serving.common.contract import declare
from pipeline.stages import package


def test_archive_holds_model_handler_manifest_and_nothing_stray(built):
    _, layout = built
    with zipfile.ZipFile(layout.mar) as zf:
        names = set(zf.namelist())
        assert names == {"MAR-INF/MANIFEST.json", "model.onnx", "onnx_handler.py", "io_contract.json", "model-config.yaml"}
        mar_manifest = json.loads(zf.read("MAR-INF/MANIFEST.json"))
        onnx_sha = hashlib.sha256(zf.read("model.onnx")).hexdigest()
        contract = json.loads(zf.read("io_contract.json"))
        config = yaml.safe_load(zf.read("model-config.yaml"))
        handler = zf.read("onnx_handler.py")
    assert mar_manifest["model"]["modelName"] == "simple_nn"
    assert mar_manifest["model"]["serializedFile"] == "model.onnx"
    assert mar_manifest["model"]["handler"] == "onnx_handler.py"
    assert mar_manifest["model"]["configFile"] == "model-config.yaml"
    manifest = Manifest(layout.root, "simple_nn")
    assert onnx_sha == manifest.records["onnx"].sha256
    assert contract == declare(load_spec("simple_nn"))
    assert config["batchSize"] >= 1 and config["maxBatchDelay"] >= 0 and config["minWorkers"] >= 1
    assert handler == archive.handler_source()


def test_manifest_records_archive(built):
    _, layout = built
    rec = Manifest(layout.root, "simple_nn").records["mar"]
    assert rec.path == "model_store/simple_nn.mar"
    assert rec.bytes == layout.mar.stat().st_size
    assert set(rec.inputs) == {"onnx", "parity", "handler"}


def _copy_with_extra(src, dst, name, data):
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w") as zout:
        for member in zin.namelist():
            zout.writestr(member, zin.read(member))
        zout.writestr(name, data)
    return dst


def test_inspect_refuses_stray_and_unsafe_members(built, tmp_path):
    _, layout = built
    with pytest.raises(IntegrityError, match="unsafe paths"):
        archive.inspect_archive(_copy_with_extra(layout.mar, tmp_path / "bad.mar", "../evil.py", "print('x')"))
    with pytest.raises(IntegrityError, match="expected exactly"):
        archive.inspect_archive(_copy_with_extra(layout.mar, tmp_path / "stray.mar", "notes.txt", "hello"))
    (tmp_path / "junk.mar").write_bytes(b"not a zip")
    with pytest.raises(IntegrityError, match="not a readable archive"):
        archive.inspect_archive(tmp_path / "junk.mar")


def test_repackage_when_archive_damaged(project):
    settings, layout = project
    layout.mar.write_bytes(layout.mar.read_bytes()[:100])
    result = package.run(settings)
    assert not result.skipped
    archive.inspect_archive(layout.mar, Manifest(layout.root, "simple_nn").records["onnx"].sha256)
    assert package.run(settings).skipped


def test_batching_options_reach_the_archives_model_config(project, capsys):
    """`package --batch-size 1 --workers 2` (the latency-first choice) repackages with that model config; 0 ms is refused."""
    from pipeline import cli

    settings, layout = project
    assert cli.main(["package", "--root", str(layout.root), "--batch-size", "1", "--workers", "2"]) == 0
    with zipfile.ZipFile(layout.mar) as zf:
        config = yaml.safe_load(zf.read("model-config.yaml"))
    assert (config["batchSize"], config["minWorkers"], config["maxWorkers"], config["maxBatchDelay"]) == (1, 2, 2, 1)
    assert "ran in" in capsys.readouterr().out  # a changed model config is a changed archive
    with pytest.raises(SystemExit) as exited:
        cli.main(["package", "--root", str(layout.root), "--max-batch-delay-ms", "0"])
    assert exited.value.code == 2 and "must be at least 1" in capsys.readouterr().err


def test_the_archiver_stages_in_a_folder_of_its_own(project, tmp_path, monkeypatch):
    """torch-model-archiver copies members into gettempdir()/<model name>: another process's folder of
    that name (or another user's) is neither removed nor read into the archive."""
    import dataclasses
    import tempfile

    shared = tmp_path / "shared-tmp"
    (shared / "simple_nn").mkdir(parents=True)
    (shared / "simple_nn" / "smuggled.py").write_text("print('owned')\n")
    monkeypatch.setattr(tempfile, "tempdir", str(shared))
    settings, layout = project
    assert not package.run(dataclasses.replace(settings, force=True)).skipped
    assert (shared / "simple_nn" / "smuggled.py").exists() and tempfile.tempdir == str(shared)
    assert not any("smuggled" in n for n in zipfile.ZipFile(layout.mar).namelist())
