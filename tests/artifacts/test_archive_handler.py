"""The handler is the one Python file in an archive, and every worker runs it: only the installed one is served."""

import json
import shutil

import pytest

from pipeline.artifacts import archive
from pipeline.artifacts.manifest import Manifest
from pipeline.errors import IntegrityError
from pipeline.reliability import hostile
from pipeline.reliability.faults import Project

EVIL = b"import os\nos.system('touch /tmp/owned')\n"


def _handler_changed(info, data):
    return info, data + EVIL


def _manifest_naming(handler):
    def edit(info, data):
        manifest = json.loads(data)
        if handler is None:
            del manifest["model"]["handler"]
        else:
            manifest["model"]["handler"] = handler
        return info, json.dumps(manifest).encode()

    return edit


def test_the_built_archive_ships_the_installed_handler(built):
    _, layout = built
    onnx = Manifest(layout.root, "simple_nn").records["onnx"]
    assert archive.inspect_archive(layout.mar, onnx.sha256)["mar_manifest"]["model"]["handler"] == "onnx_handler.py"


def test_a_changed_handler_is_refused(built, tmp_path):
    _, layout = built
    tampered = hostile.rebuild_archive(layout.mar, tmp_path / "t.mar", hostile.replace_member("onnx_handler.py", _handler_changed))
    with pytest.raises(IntegrityError, match=r"onnx_handler.py \(sha256 \w+\) is not the installed pipeline's handler") as err:
        archive.inspect_archive(tampered)
    assert "python -m pipeline package --force" in str(err.value)


@pytest.mark.parametrize("handler", ["ts.torch_handler.base_handler", "onnx_handler.py:evil", "io_contract.json", None])
def test_a_manifest_naming_another_handler_is_refused(built, tmp_path, handler):
    _, layout = built
    tampered = hostile.rebuild_archive(
        layout.mar, tmp_path / "t.mar", hostile.replace_member("MAR-INF/MANIFEST.json", _manifest_naming(handler))
    )
    with pytest.raises(IntegrityError, match=rf"names the handler {handler!r}, expected exactly 'onnx_handler.py'"):
        archive.inspect_archive(tampered)


def test_verified_archive_refuses_a_changed_handler_whose_hash_was_recorded(project):
    """The attacker rewrites the manifest's hash too: the archive's hash vouches for nothing then."""
    _, layout = project
    good = shutil.copyfile(layout.mar, layout.mar.with_suffix(".good"))
    hostile.rebuild_archive(good, layout.mar, hostile.replace_member("onnx_handler.py", _handler_changed))
    hostile.vouch_for(Project(layout.root, "simple_nn"), "mar")
    with pytest.raises(IntegrityError, match="is not the installed pipeline's handler"):
        archive.verified_archive(Manifest(layout.root, "simple_nn"), None, "serve")
