"""Whether a zip file's two listings agree: its local headers, in order, and its central directory.

Python's `zipfile` reads the central directory at the end; TorchServe's frontend
(Java's `ZipInputStream`) extracts by local headers, from offset 0, in order, a later
entry overwriting an earlier one of the same name. An entry hidden between the last
member and the central directory, or a duplicate name, is then invisible to our check
and yet replaces what it checked. So an archive is served only if its bytes are exactly:
one local header and its data (and data descriptor) per central-directory entry, in the
same order, at the recorded offsets, with the same name, flags, method, CRC and sizes;
then the central directory; then the (ZIP64) end records and a comment of the declared
length; nothing before, between or after; no name twice. Anything else is refused, not
repaired: the archive served is byte for byte the one whose hash the manifest records.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from pipeline.errors import IntegrityError

STAGE = "package"
_FIX = "rebuild the archive with the package stage: python -m pipeline package --force"

_LOCAL = struct.Struct("<4s5H3I2H")  # signature, version, flags, method, time, date, crc, sizes, name and extra lengths
_CENTRAL = struct.Struct("<4s6H3I5H2I")  # ... then comment length, disk, attributes, local header offset
_END = struct.Struct("<4s4H2IH")  # signature, disks, entries here and in all, directory size and offset, comment length
_END64 = struct.Struct("<4sQ2H2I4Q")  # signature, record size, versions, disks, entries here and in all, size, offset
_LOCATOR = struct.Struct("<4sIQI")  # signature, disk, offset of the ZIP64 end record, disks
_DESCRIPTOR_SIG = b"PK\x07\x08"
_HAS_DESCRIPTOR = 0x08
_FULL = 0xFFFFFFFF
_COMPARED = ("name", "flags", "method", "crc", "compressed", "size")


@dataclass(frozen=True)
class Entry:
    """What one listing says of a member: its raw name, and what must agree between the two."""

    name: bytes
    flags: int
    method: int
    crc: int
    compressed: int
    size: int
    offset: int = 0


def _refuse(path: Path, problem: str) -> IntegrityError:
    return IntegrityError(
        STAGE,
        f"{path.name}: {problem}; TorchServe unpacks by local headers, in order, the last of a name "
        "winning, so it would unpack other files than the ones checked",
        _FIX,
    )


def _read(f: BinaryIO, at: int, n: int) -> bytes:
    f.seek(at)
    return f.read(n)


def _zip64(extra: bytes, wanted: list[bool]) -> list[int]:
    """The 8-byte values of the ZIP64 extra field (id 1), one for each field left at 0xFFFFFFFF, in order."""
    at = 0
    while at + 4 <= len(extra):
        kind, length = struct.unpack_from("<HH", extra, at)
        if kind == 1:
            count = sum(wanted)
            return list(struct.unpack_from(f"<{count}Q", extra, at + 4)) if length >= 8 * count else []
        at += 4 + length
    return []


def _widen(values: list[int], extra: bytes) -> list[int]:
    wide = iter(_zip64(extra, [v == _FULL for v in values]))
    return [next(wide, -1) if v == _FULL else v for v in values]


def _end_record(path: Path, f: BinaryIO, size: int) -> tuple[int, int, int, int]:
    """(entries, directory offset, directory size, where the end records start): the end record ends the file exactly."""
    tail_at = max(0, size - _END.size - 0xFFFF)
    tail = _read(f, tail_at, size - tail_at)
    at = tail.rfind(b"PK\x05\x06")
    while at != -1 and not (at + _END.size <= len(tail) and tail_at + at + _END.size + _END.unpack_from(tail, at)[-1] == size):
        at = tail.rfind(b"PK\x05\x06", 0, at)
    if at == -1:
        raise _refuse(path, "no end-of-central-directory record ends the file (bytes after it, or none)")
    _, disk, cd_disk, here, entries, cd_size, cd_offset, _ = _END.unpack_from(tail, at)
    end_at = tail_at + at
    if _FULL in (cd_size, cd_offset) or 0xFFFF in (here, entries):
        locator = _LOCATOR.unpack(_read(f, end_at - _LOCATOR.size, _LOCATOR.size))
        if locator[0] != b"PK\x06\x07":
            raise _refuse(path, "its end record needs a ZIP64 locator and has none")
        record = _read(f, locator[2], _END64.size)
        fields = _END64.unpack(record) if len(record) == _END64.size else (b"", 0, 0, 0, 0, 0, 0, 0, 0, 0)
        if fields[0] != b"PK\x06\x06" or locator[2] + 12 + fields[1] != end_at - _LOCATOR.size:
            raise _refuse(path, "its ZIP64 end record is not where its locator says, or leaves bytes before the locator")
        _, _, _, _, disk, cd_disk, here, entries, cd_size, cd_offset = fields
        end_at = locator[2]
    if (disk, cd_disk) != (0, 0) or here != entries:
        raise _refuse(path, "it spans several disks")
    return entries, cd_offset, cd_size, end_at


def _central(path: Path, f: BinaryIO, count: int, offset: int, size: int) -> list[Entry]:
    data = _read(f, offset, size)
    entries, at = [], 0
    for _ in range(count):
        if at + _CENTRAL.size > len(data) or data[at : at + 4] != b"PK\x01\x02":
            raise _refuse(path, f"its central directory holds fewer than the {count} entries its end record declares")
        (_, _, _, flags, method, _, _, crc, csize, usize, name_len, extra_len, comment_len, _, _, _, local) = _CENTRAL.unpack_from(data, at)
        name = data[at + _CENTRAL.size : at + _CENTRAL.size + name_len]
        extra = data[at + _CENTRAL.size + name_len : at + _CENTRAL.size + name_len + extra_len]
        usize, csize, local = _widen([usize, csize, local], extra)
        entries.append(Entry(name, flags, method, crc, csize, usize, local))
        at += _CENTRAL.size + name_len + extra_len + comment_len
    if at != size:
        raise _refuse(path, f"its central directory is {size} bytes, its {count} entries take {at}")
    return entries


def _descriptor(f: BinaryIO, at: int, want: Entry) -> int:
    """The end of the data descriptor at `at` if it records `want`'s CRC and sizes (4- or 8-byte), else -1."""
    head = _read(f, at, 24)
    start = 4 if head[:4] == _DESCRIPTOR_SIG else 0
    for fmt in ("<3I", "<I2Q"):
        fields = struct.unpack_from(fmt, head, start) if len(head) >= start + struct.calcsize(fmt) else ()
        if fields == (want.crc, want.compressed, want.size):
            return at + start + struct.calcsize(fmt)
    return -1


def _local(path: Path, f: BinaryIO, at: int, want: Entry) -> int:
    """Check the local header at `at` says what the central directory says of `want`; where its member ends."""
    head = _read(f, at, _LOCAL.size)
    if len(head) < _LOCAL.size or head[:4] != b"PK\x03\x04":
        raise _refuse(path, f"no local header at offset {at}, where the central directory puts {want.name!r}")
    _, _, flags, method, _, _, crc, csize, usize, name_len, extra_len = _LOCAL.unpack(head)
    name = f.read(name_len)
    usize, csize = _widen([usize, csize], f.read(extra_len))  # the ZIP64 field holds them in this order
    data_end = at + _LOCAL.size + name_len + extra_len + want.compressed
    got = Entry(name, flags, method, crc, csize, usize)
    expected = Entry(want.name, want.flags, want.method, want.crc, want.compressed, want.size)
    if flags & _HAS_DESCRIPTOR:  # CRC and sizes follow the data; the header may leave them 0
        got = Entry(name, flags, method, want.crc, want.compressed, want.size)
    if got != expected:
        differ = [
            f"{k} {getattr(got, k)!r} there, {getattr(expected, k)!r} in the directory"
            for k in _COMPARED
            if getattr(got, k) != getattr(expected, k)
        ]
        raise _refuse(path, f"the local header at offset {at}, listed as {want.name!r}, differs: {'; '.join(differ)}")
    end = _descriptor(f, data_end, want) if flags & _HAS_DESCRIPTOR else data_end
    if end == -1:
        raise _refuse(path, f"the data descriptor of {want.name!r} does not match its central-directory entry")
    return end


def check_layout(path: Path) -> None:
    """Refuse a zip whose local headers, walked from offset 0, are not exactly its central directory, in order."""
    with open(path, "rb") as f:
        size = f.seek(0, 2)
        count, cd_offset, cd_size, end_at = _end_record(path, f, size)
        if cd_offset + cd_size != end_at:
            raise _refuse(path, f"{end_at - cd_offset - cd_size} bytes lie between its central directory and its end record")
        entries = _central(path, f, count, cd_offset, cd_size)
        names = [e.name for e in entries]
        dupes = sorted({n.decode(errors="replace") for n in names if names.count(n) > 1})
        if dupes:
            raise _refuse(path, f"it lists {dupes} more than once")
        at = 0
        for entry in entries:
            if entry.offset != at:
                raise _refuse(
                    path,
                    f"{entry.name!r} is listed at offset {entry.offset}, but the data before it ends at {at}: hidden or prefixed bytes",
                )
            at = _local(path, f, at, entry)
        if at != cd_offset:
            raise _refuse(path, f"{cd_offset - at} bytes lie between its last member and its central directory: a hidden entry")
