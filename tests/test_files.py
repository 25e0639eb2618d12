import hashlib
import os

import pytest

from pipeline import files


def test_write_replaces_content_and_leaves_no_temporary(tmp_path):
    target = tmp_path / "a.json"
    files.write_json(target, {"v": 1})
    files.write_json(target, {"v": 2})
    assert target.read_text().strip().endswith("}")
    assert '"v": 2' in target.read_text()
    assert [p.name for p in tmp_path.iterdir()] == ["a.json"]


def test_failed_write_keeps_previous_file(tmp_path):
    target = tmp_path / "model.bin"
    files.write_bytes(target, b"good")
    with pytest.raises(RuntimeError):
        with files.atomic_path(target) as tmp:
            tmp.write_bytes(b"half-writ")
            raise RuntimeError("crash mid-write")
    assert target.read_bytes() == b"good"
    assert [p.name for p in tmp_path.iterdir()] == ["model.bin"]


def test_failed_first_write_leaves_nothing(tmp_path):
    target = tmp_path / "new.bin"
    with pytest.raises(OSError):
        with files.atomic_path(target) as tmp:
            raise OSError(28, "No space left on device")
    assert list(tmp_path.iterdir()) == []


def test_written_files_get_normal_permissions(tmp_path):
    target = tmp_path / "x.txt"
    files.write_text(target, "hi")
    mask = os.umask(0)
    os.umask(mask)
    assert target.stat().st_mode & 0o777 == 0o666 & ~mask


def test_sha256_matches_hashlib(tmp_path):
    data = os.urandom(3 << 20)
    (tmp_path / "blob").write_bytes(data)
    assert files.sha256_file(tmp_path / "blob") == hashlib.sha256(data).hexdigest()
