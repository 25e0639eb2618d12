"""What is inside a `.mar` archive, checked before anything in it is trusted.

Entry names, types and declared sizes are checked from the zip headers alone (no
path escapes, links, encryption, duplicates or zip bombs); then the members must be
exactly the expected ones and the model inside must be the verified one, with no
external data. The package stage checks what it built; every server checks what it serves.
"""

from __future__ import annotations

import hashlib
import json
import stat
import zipfile
from pathlib import Path

import yaml

from pipeline.artifacts.names import (ARCHIVE_CONFIG, ARCHIVE_CONTRACT, ARCHIVE_MANIFEST, ARCHIVE_MEMBERS,
                                      ARCHIVE_MODEL, ONNX, archive_key)
from pipeline.artifacts.manifest import ArtifactRecord, Manifest
from pipeline.artifacts.safety import check_onnx_bytes
from pipeline.errors import IntegrityError

STAGE = "package"

# Limits checked on the sizes an archive declares, before anything is decompressed.
# An ONNX file cannot exceed protobuf's 2 GiB; real weights compress by 1-2x, while a
# zip bomb's deflate stream expands up to ~1000x.
MAX_MEMBER_BYTES = 2 << 30
MAX_TOTAL_BYTES = 4 << 30
MAX_RATIO = 100
RATIO_FLOOR_BYTES = 1 << 20  # small members (configs, text) may compress better


def unsafe_name(name: str) -> bool:
    parts = name.replace("\\", "/").split("/")
    return (name.startswith(("/", "\\")) or (len(name) > 1 and name[1] == ":")
            or ".." in parts or "\x00" in name)


def check_members(path: Path, infos: list[zipfile.ZipInfo]) -> None:
    """Refuse unsafe entries by their headers alone: nothing is read or extracted yet."""
    fix = "rebuild the archive with the package stage: python -m pipeline package --force"
    names = [i.filename for i in infos]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise IntegrityError(STAGE, f"{path.name} has duplicate entries {dupes}; which one a reader takes is undefined", fix)
    bad = [n for n in names if unsafe_name(n)]
    if bad:
        raise IntegrityError(STAGE, f"{path.name} has unsafe paths {bad} (absolute or with '..')", fix)
    links = [i.filename for i in infos if stat.S_ISLNK(i.external_attr >> 16)]
    if links:
        raise IntegrityError(STAGE, f"{path.name} has symbolic-link entries {links}; extracting them could write outside the model folder", fix)
    encrypted = [i.filename for i in infos if i.flag_bits & 0x1]
    if encrypted:
        raise IntegrityError(STAGE, f"{path.name} has encrypted entries {encrypted}", fix)
    for i in infos:
        ratio = i.file_size / max(i.compress_size, 1)
        if i.file_size > MAX_MEMBER_BYTES or (i.file_size > RATIO_FLOOR_BYTES and ratio > MAX_RATIO):
            raise IntegrityError(STAGE, f"{path.name}: entry {i.filename!r} declares {i.file_size} bytes from "
                                 f"{i.compress_size} compressed ({ratio:.0f}:1); refusing a possible zip bomb", fix)
    total = sum(i.file_size for i in infos)
    if total > MAX_TOTAL_BYTES:
        raise IntegrityError(STAGE, f"{path.name} declares {total} bytes uncompressed in all; refusing a possible zip bomb", fix)


def inspect_archive(path: Path, onnx_sha256: str | None = None) -> dict:
    """Check an archive holds exactly the expected files, the right model, safe paths.

    Entry names, types and declared sizes are checked before any entry is read; the
    model inside is checked for external data before anything loads it.
    """
    try:
        with zipfile.ZipFile(path) as zf:
            infos = zf.infolist()
            check_members(path, infos)
            names = [i.filename for i in infos]
            got = set(names)
            if got != ARCHIVE_MEMBERS:
                raise IntegrityError(STAGE, f"{path.name} holds {sorted(got)}, expected exactly {sorted(ARCHIVE_MEMBERS)}",
                                     "rebuild the archive with the package stage")
            manifest = json.loads(zf.read(ARCHIVE_MANIFEST))
            model = zf.read(ARCHIVE_MODEL)
            contract = json.loads(zf.read(ARCHIVE_CONTRACT))
            config = yaml.safe_load(zf.read(ARCHIVE_CONFIG))
    except zipfile.BadZipFile as exc:
        raise IntegrityError(STAGE, f"{path} is not a readable archive: {exc}", "rebuild it: make export") from None
    model_sha = hashlib.sha256(model).hexdigest()
    if onnx_sha256 is not None and model_sha != onnx_sha256:
        raise IntegrityError(STAGE, f"{path.name} holds a {ARCHIVE_MODEL} other than the verified one", "rebuild the archive")
    check_onnx_bytes(model, f"{path.name}:{ARCHIVE_MODEL}")
    return {"members": sorted(names), "mar_manifest": manifest, "model_sha256": model_sha,
            "contract": contract, "model_config": config}


def verified_archive(manifest: Manifest, variant: str | None, stage: str) -> tuple[Path, ArtifactRecord]:
    """The model's archive, or a variant's: its hash checked against the manifest, then what it holds."""
    path, rec = manifest.verified(archive_key(variant), stage)
    inspect_archive(path, manifest.records[variant or ONNX].sha256)
    return path, rec
