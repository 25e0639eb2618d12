"""Hostile files, written by someone who controls the manifest too: our checks refuse them first."""

from __future__ import annotations

import shutil

import pytest

from pipeline.artifacts import archive, checkpoint
from pipeline.errors import IntegrityError
from pipeline.reliability import hostile
from pipeline.reliability.faults import Project, copy_project
from pipeline.runtimes.session import create_session
from pipeline.serving.torchserve import server as serve


@pytest.fixture
def victim(built_root, tmp_path) -> Project:
    return copy_project(built_root, tmp_path / "project", "simple_nn")


def test_pickle_checkpoints_are_refused_without_running_them(victim, tmp_path):
    assert hostile.payload_is_live(tmp_path)  # the payload does run when unpickled
    cases = hostile.pickle_checkpoints(victim)
    assert [c.name for c in cases] == ["torch.save pickle as checkpoint", "plain pickle as checkpoint"]
    for case in cases:
        assert case.refused and not case.payload_ran, case
        assert "not safetensors; refusing to load it" in case.message
    assert not list(victim.root.glob(f"{hostile.MARKER}*"))


def test_checkpoint_header_check(tmp_path):
    path = tmp_path / "checkpoint.safetensors"
    path.write_bytes(b"\xff" * 64)
    with pytest.raises(IntegrityError, match="does not start with a safetensors header"):
        checkpoint.check_header(path, "test")
    path.write_bytes(b"")
    with pytest.raises(IntegrityError, match="does not start with a safetensors header"):
        checkpoint.check_header(path, "test")


@pytest.mark.parametrize("name, location", list(hostile.EXTERNAL_LOCATIONS.items()), ids=["escapes", "absolute", "inside"])
def test_onnx_external_data_is_refused_before_onnx_runtime(built, tmp_path, name, location):
    _, layout = built
    path = tmp_path / "model.onnx"
    path.write_bytes(hostile.external_data_model(layout.onnx.read_bytes(), location))
    want = "points outside the model's folder" if location != "weights.bin" else "is kept in an external file"
    with pytest.raises(IntegrityError, match=f"initializer 'layer1.weight' {want}.*only loads ONNX files with their weights embedded"):
        create_session(path)


def test_parity_refuses_an_external_data_model_even_when_the_manifest_vouches_for_it(victim):
    cases = hostile.onnx_external_data(victim)
    assert len(cases) == 3 and all(c.refused for c in cases), cases


ARCHIVE_MESSAGES = {
    "entry with ../ (../evil.py)": "unsafe paths",
    "absolute entry (/tmp/evil.py)": "unsafe paths",
    "backslash entry (..\\evil.py)": "unsafe paths",
    "symlink entry (handler -> /etc/passwd)": "symbolic-link entries ['onnx_handler.py']",
    "duplicate entry (second model.onnx)": "lists ['model.onnx'] more than once",
    "zip bomb (64 MiB of zeros as model.onnx)": "refusing a possible zip bomb",
    "unexpected extra member (notes.txt)": "expected exactly",
    "model with external data inside the archive": "points outside the model's folder",
    "size header declaring 4 GiB for model.onnx": "4294967280 in the directory",
    "handler that runs os.system": "is not the installed pipeline's handler",
    "MANIFEST.json naming another handler": "names the handler 'ts.torch_handler.base_handler'",
    "hidden entry (onnx_handler.py before the central directory)": "between its last member and its central directory",
    "duplicate entry (second onnx_handler.py)": "lists ['onnx_handler.py'] more than once",
}


def test_hostile_archives_are_refused_by_inspect_archive(victim, tmp_path):
    cases = hostile.archive_cases(victim, tmp_path / "archives")
    assert {c.name for c in cases} == set(ARCHIVE_MESSAGES)
    for case in cases:
        assert case.refused and not case.payload_ran, case
        assert ARCHIVE_MESSAGES[case.name] in case.message, case


def test_archive_entries_are_checked_before_any_is_read(built, tmp_path, monkeypatch):
    """The zip bomb is refused from its header: nothing is decompressed."""
    _, layout = built
    bomb = hostile.rebuild_archive(layout.mar, tmp_path / "bomb.mar", hostile.replace_member("model.onnx", hostile.as_zip_bomb))

    def no_reading(*args, **kwargs):
        raise AssertionError("an entry was read before the checks")

    monkeypatch.setattr(archive.zipfile.ZipFile, "read", no_reading)
    monkeypatch.setattr(archive.zipfile.ZipFile, "open", no_reading)
    with pytest.raises(IntegrityError, match=r"'model.onnx' declares 67108864 bytes .*zip bomb"):
        archive.inspect_archive(bomb)


def test_symlinked_artifact_and_escaping_manifest_path_are_refused(victim, tmp_path):
    cases = hostile.escaping_artifacts(victim, tmp_path / "outside")
    assert len(cases) == 2
    for case in cases:
        assert case.refused and "is a symbolic link or lies outside" in case.message, case


def test_hostile_checkpoint_folders_are_refused_before_anything_outside_is_read(tmp_path):
    cases = hostile.checkpoint_folders(tmp_path)
    assert [c.name for c in cases] == list(hostile.CHECKPOINT_EDITS)
    for case in cases:
        assert case.survived, case
        assert "leads outside the checkpoint folder" in case.message or "may name only .safetensors files" in case.message, case


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("java") is None, reason="serve.start checks for java first")
def test_serve_refuses_a_hostile_archive_before_starting_anything(victim, tmp_path):
    mar = victim.layout.mar
    hostile.rebuild_archive(shutil.copyfile(mar, tmp_path / "good.mar"), mar, hostile.replace_member("onnx_handler.py", hostile.as_symlink))
    hostile.vouch_for(victim, "mar")
    with pytest.raises(IntegrityError, match="symbolic-link entries"):
        serve.start(victim.settings, auto_ports=True)
    assert not (serve.run_dir(victim.layout) / "server.json").exists()
