"""An archive is served only if its local headers are its central directory: TorchServe unpacks by the former."""

import shutil
import struct
import zipfile

import pytest

from pipeline.artifacts import archive
from pipeline.artifacts.manifest import Manifest
from pipeline.artifacts.ziplayout import check_layout
from pipeline.errors import IntegrityError
from pipeline.reliability import hostile
from pipeline.reliability.faults import Project
from pipeline.serving.torchserve import server as serve


def _local_names(path):
    """The names a reader walking local headers from offset 0 meets, in order (as TorchServe's frontend does)."""
    data, at, names = path.read_bytes(), 0, []
    while data[at : at + 4] == b"PK\x03\x04":
        csize, _, name_len, extra_len = struct.unpack_from("<2I2H", data, at + 18)
        names.append(data[at + 30 : at + 30 + name_len].decode())
        at += 30 + name_len + extra_len + csize
    return names


def _zip(path, comment=b""):
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("a.txt", b"hello" * 100)
        zf.writestr("b.txt", b"")
        zf.comment = comment
    return path


def test_the_built_archive_and_ordinary_zips_pass(built, tmp_path):
    _, layout = built
    check_layout(layout.mar)
    check_layout(_zip(tmp_path / "c.zip", comment=b"a comment holding PK\x05\x06"))
    with zipfile.ZipFile(tmp_path / "z64.zip", "w") as zf, zf.open("big", "w", force_zip64=True) as f:
        f.write(b"x" * 1000)
    check_layout(tmp_path / "z64.zip")


def test_a_hidden_entry_is_what_a_local_header_reader_unpacks_last(built, tmp_path):
    """The attack is real: zipfile lists the archive unchanged, a local-header walk meets a second handler."""
    _, layout = built
    hidden = hostile.hide_member(layout.mar, tmp_path / "h.mar", "onnx_handler.py", b"evil")
    assert zipfile.ZipFile(hidden).namelist() == zipfile.ZipFile(layout.mar).namelist()
    assert _local_names(hidden)[-1] == "onnx_handler.py" and _local_names(hidden).count("onnx_handler.py") == 2
    with pytest.raises(IntegrityError, match="bytes lie between its last member and its central directory: a hidden entry"):
        archive.inspect_archive(hidden)


@pytest.mark.parametrize(
    "damage, message",
    [
        (lambda b: b"#!/bin/sh\n" + b, "between its central directory and its end record"),  # a prefix shifts every offset
        (lambda b: b + b"trailing", "no end-of-central-directory record ends the file"),
        (
            lambda b: b.replace(b"a.txt", b"z.txt", 1),
            r"the local header at offset 0, listed as b'a.txt', differs: name b'z.txt' there, b'a.txt' in the directory",
        ),
    ],
    ids=["prefix", "after the end record", "local name differs"],
)
def test_bytes_the_central_directory_does_not_account_for_are_refused(tmp_path, damage, message):
    path = tmp_path / "d.zip"
    path.write_bytes(damage(_zip(tmp_path / "good.zip").read_bytes()))
    with pytest.raises(IntegrityError, match=message):
        check_layout(path)


def test_a_duplicate_handler_is_refused(built, tmp_path):
    _, layout = built
    twice = hostile.rebuild_archive(
        layout.mar, tmp_path / "t.mar", hostile.add_member("onnx_handler.py", hostile.smuggled_handler(tmp_path / "ran"))
    )
    with pytest.raises(IntegrityError, match=r"lists \['onnx_handler.py'\] more than once"):
        check_layout(twice)


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("java") is None, reason="serve.start checks for java first")
@pytest.mark.parametrize("smuggle", ["hidden", "duplicate"])
def test_serve_refuses_a_smuggled_handler_and_it_never_runs(project, tmp_path, smuggle):
    """The manifest vouches for the hostile archive (its hash recorded): refused before TorchServe starts."""
    settings, layout = project
    marker = tmp_path / "smuggled-handler-ran"
    good = shutil.copyfile(layout.mar, tmp_path / "good.mar")
    code = hostile.smuggled_handler(marker)
    if smuggle == "hidden":
        hostile.hide_member(good, layout.mar, "onnx_handler.py", code)
    else:
        hostile.rebuild_archive(good, layout.mar, hostile.add_member("onnx_handler.py", code))
    hostile.vouch_for(Project(layout.root, "simple_nn"), "mar")
    try:
        with pytest.raises(IntegrityError, match="would unpack other files than the ones checked"):
            serve.start(settings, auto_ports=True, timeout=60)
    finally:
        serve.stop(settings)
    assert not (serve.run_dir(layout) / "server.json").exists()
    assert not marker.exists()


def test_the_server_serves_its_private_copy_checked_after_copying(project, tmp_path, monkeypatch):
    """No gap between check and use: a swap while the copy is made is caught, and the original is never served."""
    _, layout = project
    manifest = Manifest(layout.root, "simple_nn")
    store = tmp_path / "store"
    store.mkdir()
    copy, rec, version = archive.private_archive(manifest, None, "serve", store)
    assert copy == store / f"{layout.mar.stem}-{version}.mar" and copy.read_bytes() == layout.mar.read_bytes()
    assert version == manifest.records["mar"].details["version"]

    hidden = hostile.hide_member(layout.mar, tmp_path / "h.mar", "onnx_handler.py", b"evil")
    copyfile = shutil.copyfile

    def swapped_while_copying(src, dst):  # the checked file is replaced between the hash check and the copy
        return copyfile(hidden, dst)

    monkeypatch.setattr(archive.shutil, "copyfile", swapped_while_copying)
    with pytest.raises(IntegrityError, match="changed while it was being copied"):
        archive.private_archive(manifest, None, "serve", store)
    assert sorted(store.iterdir()) == [copy]  # the refused copy is gone; the good one before it is untouched
    assert copy.read_bytes() == layout.mar.read_bytes()


def test_the_version_is_what_the_members_make_and_a_manifest_that_says_otherwise_is_refused(built, tmp_path):
    """An archive's version (TorchServe's model version, in every answer) is recomputed from its members at every check."""
    _, layout = built
    info = archive.inspect_archive(layout.mar)
    assert info["version"] == info["mar_manifest"]["model"]["modelVersion"] and len(info["version"]) == 12
    assert info["version"] == Manifest(layout.root, "simple_nn").records["mar"].details["version"]
    relabelled = tmp_path / "relabelled.mar"
    with zipfile.ZipFile(layout.mar) as src, zipfile.ZipFile(relabelled, "w") as dst:
        for item in src.infolist():
            data = src.read(item)
            if item.filename == "MAR-INF/MANIFEST.json":
                data = data.replace(info["version"].encode(), b"1.0")
            dst.writestr(item, data)
    with pytest.raises(IntegrityError, match=r"gives the version '1.0', but its members make '[0-9a-f]{12}'"):
        archive.inspect_archive(relabelled)
