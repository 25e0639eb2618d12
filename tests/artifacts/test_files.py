import hashlib
import os

import pytest

from pipeline.artifacts import files


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
    with pytest.raises(RuntimeError), files.atomic_path(target) as tmp:
        tmp.write_bytes(b"half-writ")
        raise RuntimeError("crash mid-write")
    assert target.read_bytes() == b"good"
    assert [p.name for p in tmp_path.iterdir()] == ["model.bin"]


def test_failed_first_write_leaves_nothing(tmp_path):
    target = tmp_path / "new.bin"
    with pytest.raises(files.DiskFullError, match=r"could not write .*new.bin: OSError: \[Errno 28\]"), files.atomic_path(target):
        raise OSError(28, "No space left on device")
    assert list(tmp_path.iterdir()) == []


def test_other_errors_pass_through_unchanged(tmp_path):
    with pytest.raises(ValueError, match="not about space"), files.atomic_path(tmp_path / "x.bin"):
        raise ValueError("not about space")


def test_write_over_the_file_size_limit_is_refused_up_front(tmp_path, monkeypatch):
    target = tmp_path / "model.bin"
    files.write_bytes(target, b"x" * 4096)
    monkeypatch.setattr(files.resource, "getrlimit", lambda _: (1024, 1024))
    with pytest.raises(files.DiskFullError, match=r"file-size limit \(ulimit -f\) is 1024 bytes"):
        files.write_bytes(target, b"y" * 4096)
    assert target.read_bytes() == b"x" * 4096
    assert [p.name for p in tmp_path.iterdir()] == ["model.bin"]


def test_sweep_removes_only_dead_writers_temporaries(tmp_path):
    import subprocess
    import sys

    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead_pid = int(dead.stdout)
    stale = [tmp_path / f".model.onnx.{dead_pid}.abcd1234.tmp", tmp_path / f".simple_nn-{dead_pid}.x1y2z3w4"]
    stale[0].write_bytes(b"half")
    stale[1].mkdir()
    live = tmp_path / f".model.onnx.{os.getpid()}.abcd1234.tmp"
    live.write_bytes(b"mine")
    keep = [tmp_path / ".gitkeep", tmp_path / "model.onnx"]
    for p in keep:
        p.write_bytes(b"")
    assert sorted(files.sweep_stale(tmp_path)) == sorted(stale)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(p.name for p in [live, *keep])


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
