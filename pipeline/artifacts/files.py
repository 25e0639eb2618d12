"""Atomic writes and content hashes: a crashed stage leaves the old file or none.

A write goes to a temporary file beside the target (`.<name>.<pid>.<random>.tmp`),
is fsynced and renamed over the target. A process killed mid-write leaves only its
temporary file, which the next write to the same target removes once the process
that made it is gone. A full disk (or a file-size limit) is refused with a
`DiskFullError` naming the file, and the previous file stays as it was. Files that
belong together (an ONNX file and its external data) are written in a private folder
beside their targets and renamed in, one after another (`atomic_files`).
"""

from __future__ import annotations

import contextlib
import difflib
import errno
import hashlib
import json
import os
import re
import resource
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from pipeline.errors import PipelineError

# errno values and the words libraries that wrap them (safetensors' Rust, torch's
# C++) put in their messages when a write runs out of room.
_NO_ROOM_ERRNOS = {errno.ENOSPC, errno.EFBIG, errno.EDQUOT}
_NO_ROOM_WORDS = ("No space left on device", "File too large", "Disk quota exceeded", "os error 28", "os error 27")


class DiskFullError(PipelineError):
    """A write ran out of disk space or hit the file-size limit; nothing was replaced."""


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


# mkstemp creates files 0600; artifacts get the usual permissions instead.
_FILE_MODE = 0o666 & ~_umask()


def _fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's live process
        return True
    return True


# What a writer leaves while it works: `.<name>.<pid>.<8 random>.tmp` (atomic_path)
# or `.<name>-<pid>.<8 random>` (a staging folder: atomic_files, the package stage);
# mkstemp's random part is [a-z0-9_]{8}. `.tmp.data` is the external data that ONNX
# writers named after an atomic_path temporary file before export used atomic_files.
TEMP_NAME = re.compile(r"^\..+?[.-](?P<pid>\d+)\.[a-z0-9_]{8}(\.tmp(\.data)?)?$")


def sweep_stale(folder: Path) -> list[Path]:
    """Remove the temporary files and folders in `folder` whose writer process is gone.

    They are what a killed writer leaves behind; a live writer's are kept, so two
    processes writing the same folder never remove each other's work.
    """
    removed: list[Path] = []
    if not Path(folder).is_dir():
        return removed
    for entry in Path(folder).iterdir():
        match = TEMP_NAME.match(entry.name)
        if not match or _pid_alive(int(match["pid"])):
            continue
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry, ignore_errors=True)
        else:
            entry.unlink(missing_ok=True)
        removed.append(entry)
    return removed


def temp_prefix(name: str) -> str:
    """The prefix of this process's temporary files for target `name`."""
    return f".{name}.{os.getpid()}."


def no_room(exc: BaseException) -> bool:
    if isinstance(exc, OSError) and exc.errno in _NO_ROOM_ERRNOS:
        return True
    return any(word in str(exc) for word in _NO_ROOM_WORDS)


def _disk_full(path: Path, why: str) -> DiskFullError:
    return DiskFullError(
        "write",
        f"could not write {path}: {why}; the previous {path.name} (if any) is unchanged and no partial file was left",
        f"free space on the filesystem of {path.parent} (df -h {path.parent}) or raise the file-size limit (ulimit -f), then run again",
    )


def _check_room(path: Path, at_least: int = 0) -> None:
    """Refuse up front a write that cannot fit: no free block, or a file-size limit below the old file's size.

    Some writers abort the whole process when the disk fills mid-write instead of
    raising (torch.jit.save to a file name does; the trace stage serialises in memory
    for that reason), so the obvious cases are caught before they start.
    """
    needed = max(path.stat().st_size if path.exists() else 0, at_least, 1)
    stat = os.statvfs(path.parent)
    free = stat.f_bavail * stat.f_frsize
    if free < needed:
        raise _disk_full(path, f"{free} bytes free on its filesystem, the previous version took {needed}")
    limit, _ = resource.getrlimit(resource.RLIMIT_FSIZE)
    if limit != resource.RLIM_INFINITY and limit < needed:
        raise _disk_full(path, f"the file-size limit (ulimit -f) is {limit} bytes, the previous version took {needed}")


@contextlib.contextmanager
def atomic_path(path: Path, at_least: int = 0) -> Iterator[Path]:
    """Yield a temporary path beside `path`; on success fsync it and move it into place.

    For libraries that insist on writing a file by name (ONNX, safetensors, zip).
    On any exception the temporary file is removed and `path` is left untouched; an
    exception that means the disk is full becomes a `DiskFullError` naming `path`.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    sweep_stale(path.parent)
    _check_room(path, at_least)
    fd, tmp_name = tempfile.mkstemp(prefix=temp_prefix(path.name), suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        with no_room_is_an_error(path):
            yield tmp
            with open(tmp, "rb+") as f:
                f.flush()
                os.fsync(f.fileno())
        os.chmod(tmp, _FILE_MODE)
        os.replace(tmp, path)
        _fsync_dir(path.parent)
    finally:
        tmp.unlink(missing_ok=True)


@contextlib.contextmanager
def atomic_files(*paths: Path) -> Iterator[tuple[Path, ...]]:
    """Yield paths with the targets' own names in a private folder beside them; on success move them in, in order.

    For files that name each other (an ONNX file and its external data, which the ONNX
    file refers to by name): each is written under its final name, checked there, then
    fsynced and renamed over its target in the order given, so a reader that finds the
    last has the others. A target the body did not write is removed after the moves (a
    file the new version no longer has). On any exception nothing is moved and the folder
    is removed; a killed writer's folder is removed by the next write (`sweep_stale`).
    """
    targets = [Path(p) for p in paths]
    parent = targets[0].parent
    if any(t.parent != parent for t in targets) or len({t.name for t in targets}) != len(targets):
        raise ValueError(f"atomic_files writes distinct files of one folder, got {targets}")
    parent.mkdir(parents=True, exist_ok=True)
    sweep_stale(parent)
    for target in targets:
        _check_room(target)
    staging = Path(tempfile.mkdtemp(prefix=f".{targets[-1].name}-{os.getpid()}.", dir=parent))
    staged = tuple(staging / t.name for t in targets)
    try:
        with no_room_is_an_error(targets[-1]):
            yield staged
            written = [s for s in staged if s.is_file()]
            for s in written:
                with open(s, "rb+") as f:
                    os.fsync(f.fileno())
        for s, target in zip(staged, targets):
            if s in written:
                os.chmod(s, _FILE_MODE)
                os.replace(s, target)
        for s, target in zip(staged, targets):
            if s not in written:
                target.unlink(missing_ok=True)
        _fsync_dir(parent)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


@contextlib.contextmanager
def no_room_is_an_error(path: Path) -> Iterator[None]:
    """Turn any exception that means the disk is full into a `DiskFullError` naming `path`."""
    try:
        yield
    except DiskFullError:
        raise
    except Exception as exc:
        if no_room(exc):
            raise _disk_full(Path(path), f"{type(exc).__name__}: {exc}") from None
        raise


def write_bytes(path: Path, data: bytes | memoryview) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def write_text(path: Path, text: str) -> None:
    write_bytes(path, text.encode("utf-8"))


def write_json(path: Path, obj: Any) -> None:
    write_text(path, json.dumps(obj, indent=2, sort_keys=False) + "\n")


def human_bytes(n: float) -> str:
    """A size in the unit that fits it: 512 B, 1.5 KiB, 596.0 MiB, 2.3 GiB."""
    for unit in ("B", "KiB", "MiB"):
        if n < 1024:
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GiB"


def nearby(path: Path, fits: Callable[[Path], bool]) -> str | None:
    """The name of the entry beside a path that does not exist closest to its name (a typo's likely target), or None."""
    folder = path.parent
    if not folder.is_dir():
        return None
    try:
        names = [p.name for p in folder.iterdir() if fits(p)]
    except OSError:
        return None
    close = difflib.get_close_matches(path.name, names, n=1, cutoff=0.7)
    return close[0] if close else None
