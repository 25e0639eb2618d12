"""What is inside a `.mar` archive, checked before anything in it is trusted.

First the file's layout: its local headers, walked from offset 0, must be exactly its
central directory (`ziplayout`), since TorchServe extracts by the former and `zipfile`
reads the latter. Entry names, types and declared sizes are checked from the zip headers
alone (no path escapes, links, encryption, duplicates or zip bombs); then the members must be
exactly the expected ones, plus `model.onnx.data` when the model keeps its weights in
external data and `tokenizer.json` (its hash the contract's) when it takes texts; the
handler (the one Python file inside, which every worker runs) must be the installed
package's own, and the one the archive's manifest names; and the model inside (and its
data) must be the verified one, pointing at no other file. The package
stage checks what it built; every server checks what it serves, in a private copy
(`private_archive`) that it then serves, so no one can swap the file in between.
"""

from __future__ import annotations

import hashlib
import importlib.resources
import json
import os
import shutil
import stat
import zipfile
from pathlib import Path
from typing import Any

import yaml

from pipeline.artifacts import files
from pipeline.artifacts.manifest import ArtifactRecord, Manifest
from pipeline.artifacts.names import (
    ARCHIVE_CONFIG,
    ARCHIVE_CONTRACT,
    ARCHIVE_DATA,
    ARCHIVE_HANDLER,
    ARCHIVE_MANIFEST,
    ARCHIVE_MEMBERS,
    ARCHIVE_MODEL,
    ARCHIVE_PT2,
    ARCHIVE_TOKENIZER,
    EXTERNAL_DATA,
    ONNX,
    archive_key,
)
from pipeline.artifacts.safety import check_data_size, check_onnx_bytes
from pipeline.artifacts.version import archive_version, content_version
from pipeline.artifacts.ziplayout import check_layout
from pipeline.errors import IntegrityError

STAGE = "package"

# Limits checked on the sizes an archive declares, before anything is decompressed.
# An ONNX file cannot exceed protobuf's 2 GiB, nor can any other member need to; the
# external-data file of a larger model may (a 604 M-parameter MLP's is 2.4 GB). Real
# weights compress by 1-2x, while a zip bomb's deflate stream expands up to ~1000x.
MAX_MEMBER_BYTES = 2 << 30
MAX_DATA_BYTES = 16 << 30
MAX_TOTAL_BYTES = MAX_DATA_BYTES + (2 << 30)
MAX_RATIO = 100
RATIO_FLOOR_BYTES = 1 << 20  # small members (configs, text) may compress better
_BLOCK = 1 << 20
_FIX = "rebuild the archive with the package stage: python -m pipeline package --force"


def unsafe_name(name: str) -> bool:
    parts = name.replace("\\", "/").split("/")
    return name.startswith(("/", "\\")) or (len(name) > 1 and name[1] == ":") or ".." in parts or "\x00" in name


def check_members(path: Path, infos: list[zipfile.ZipInfo]) -> None:
    """Refuse unsafe entries by their headers alone: nothing is read or extracted yet."""
    names = [i.filename for i in infos]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise IntegrityError(STAGE, f"{path.name} has duplicate entries {dupes}; which one a reader takes is undefined", _FIX)
    bad = [n for n in names if unsafe_name(n)]
    if bad:
        raise IntegrityError(STAGE, f"{path.name} has unsafe paths {bad} (absolute or with '..')", _FIX)
    links = [i.filename for i in infos if stat.S_ISLNK(i.external_attr >> 16)]
    if links:
        raise IntegrityError(
            STAGE, f"{path.name} has symbolic-link entries {links}; extracting them could write outside the model folder", _FIX
        )
    encrypted = [i.filename for i in infos if i.flag_bits & 0x1]
    if encrypted:
        raise IntegrityError(STAGE, f"{path.name} has encrypted entries {encrypted}", _FIX)
    for i in infos:
        ratio = i.file_size / max(i.compress_size, 1)
        limit = MAX_DATA_BYTES if i.filename == ARCHIVE_DATA else MAX_MEMBER_BYTES
        if i.file_size > limit or (i.file_size > RATIO_FLOOR_BYTES and ratio > MAX_RATIO):
            raise IntegrityError(
                STAGE,
                f"{path.name}: entry {i.filename!r} declares {i.file_size} bytes from "
                f"{i.compress_size} compressed ({ratio:.0f}:1; at most {limit} bytes and {MAX_RATIO}:1); refusing a possible zip bomb",
                _FIX,
            )
    total = sum(i.file_size for i in infos)
    if total > MAX_TOTAL_BYTES:
        raise IntegrityError(STAGE, f"{path.name} declares {total} bytes uncompressed in all; refusing a possible zip bomb", _FIX)
    # A stored member's declared size is its compressed size: it must lie within the file.
    packed = sum(i.compress_size for i in infos)
    if packed > path.stat().st_size:
        raise IntegrityError(
            STAGE, f"{path.name} declares {packed} bytes of entries in a file of {path.stat().st_size}; its headers lie", _FIX
        )


def handler_source() -> bytes:
    """The entry module every archive ships (package data, so a wheel install can package)."""
    resource = importlib.resources.files("pipeline.handlers") / ARCHIVE_HANDLER
    try:
        return resource.read_bytes()
    except FileNotFoundError:
        raise IntegrityError(
            STAGE,
            f"the handler {ARCHIVE_HANDLER} is missing from the installed pipeline package",
            "reinstall the project (pip install the wheel again, or pip install -e . in a checkout)",
        ) from None


def check_handler(path: Path, mar_manifest: object, handler: bytes) -> None:
    """The handler is code every worker runs: only the installed package's, named by the archive's manifest, is served."""
    model = mar_manifest.get("model") if isinstance(mar_manifest, dict) else None
    named = model.get("handler") if isinstance(model, dict) else None
    if named != ARCHIVE_HANDLER:
        raise IntegrityError(
            STAGE, f"{path.name}: its {ARCHIVE_MANIFEST} names the handler {named!r}, expected exactly {ARCHIVE_HANDLER!r}", _FIX
        )
    installed = handler_source()
    if handler != installed:
        raise IntegrityError(
            STAGE,
            f"{path.name}: its {ARCHIVE_HANDLER} (sha256 {hashlib.sha256(handler).hexdigest()[:12]}) is not the installed "
            f"pipeline's handler (sha256 {hashlib.sha256(installed).hexdigest()[:12]}): built by another version, or changed "
            "since; refusing to run its code in a worker",
            _FIX,
        )


def sha256_member(zf: zipfile.ZipFile, name: str) -> str:
    """The member's sha256, read in blocks: a model's data file is never held in memory whole."""
    digest = hashlib.sha256()
    with zf.open(name) as f:
        while block := f.read(_BLOCK):
            digest.update(block)
    return digest.hexdigest()


def inspect_archive(path: Path, onnx_sha256: str | None = None, data_sha256: str | None = None) -> dict:
    """Check an archive holds exactly the expected files, the installed handler, the right model, safe paths.

    An archive whose local headers and central directory disagree (a hidden entry, a
    prefix, bytes after the end) is refused before anything else. Entry names, types and declared sizes are checked before any entry is read. The
    handler must be the installed package's, byte for byte, and the one its manifest
    names: whoever can replace an archive can record its hash too. The model inside is
    checked for external data before anything loads it: it may keep its weights only in
    the archive's `model.onnx.data`. Where the verified model's hash is given
    (`onnx_sha256`), its data file must be the verified one too (`data_sha256`, None for
    a model with its weights embedded).
    """
    try:
        with zipfile.ZipFile(path) as zf:  # reads the end record and the central directory, no entry yet
            check_layout(path)
            infos = zf.infolist()
            check_members(path, infos)
            names = [i.filename for i in infos]
            got = set(names)
            contract = json.loads(zf.read(ARCHIVE_CONTRACT)) if ARCHIVE_CONTRACT in got else {}
            tokenizer, package = tokenizer_sha256(contract), pt2_sha256(contract)
            expected = ARCHIVE_MEMBERS | ({ARCHIVE_TOKENIZER} if tokenizer else set()) | ({ARCHIVE_PT2} if package else set())
            if not expected <= got <= expected | {ARCHIVE_DATA}:
                raise IntegrityError(
                    STAGE,
                    f"{path.name} holds {sorted(got)}, expected exactly {sorted(expected)}, "
                    f"plus {ARCHIVE_DATA} for a model with external data",
                    "rebuild the archive with the package stage",
                )
            if tokenizer and sha256_member(zf, ARCHIVE_TOKENIZER) != tokenizer:
                raise IntegrityError(STAGE, f"{path.name} holds a {ARCHIVE_TOKENIZER} other than the one its contract records", _FIX)
            if package and sha256_member(zf, ARCHIVE_PT2) != package:
                raise IntegrityError(STAGE, f"{path.name} holds a {ARCHIVE_PT2} other than the one its contract records", _FIX)
            manifest = json.loads(zf.read(ARCHIVE_MANIFEST))
            handler = zf.read(ARCHIVE_HANDLER)
            check_handler(path, manifest, handler)
            model = zf.read(ARCHIVE_MODEL)
            config_bytes = zf.read(ARCHIVE_CONFIG)
            config = yaml.safe_load(config_bytes)
            model_sha, data_sha = _check_model(path, zf, model, onnx_sha256, data_sha256)
            hashes = {
                ARCHIVE_MODEL: model_sha,
                ARCHIVE_HANDLER: hashlib.sha256(handler).hexdigest(),
                ARCHIVE_CONTRACT: sha256_member(zf, ARCHIVE_CONTRACT),
                ARCHIVE_CONFIG: hashlib.sha256(config_bytes).hexdigest(),
                **({ARCHIVE_DATA: data_sha} if data_sha else {}),
                **({ARCHIVE_TOKENIZER: tokenizer} if tokenizer else {}),
                **({ARCHIVE_PT2: package} if package else {}),
            }
            version = _check_version(path, manifest, hashes)
    except zipfile.BadZipFile as exc:  # also a member whose CRC does not match
        raise IntegrityError(STAGE, f"{path} is not a readable archive: {exc}", "rebuild it: python -m pipeline package --force") from None
    return {
        "members": sorted(names),
        "mar_manifest": manifest,
        "version": version,
        "model_sha256": model_sha,
        "data_sha256": data_sha,
        "contract": contract,
        "model_config": config,
    }


def _check_version(path: Path, mar_manifest: dict, hashes: dict[str, str]) -> str:
    """The archive's version, once its MANIFEST.json records the one its members make (`content_version`)."""
    recorded, made = archive_version(mar_manifest), content_version(hashes)
    if recorded != made:
        raise IntegrityError(
            STAGE,
            f"{path.name}: its {ARCHIVE_MANIFEST} gives the version {recorded!r}, but its members make {made!r} "
            "(built by an older pipeline, or a member was changed)",
            _FIX,
        )
    return made


def _check_model(path: Path, zf: zipfile.ZipFile, model: bytes, onnx_sha256: str | None, data_sha256: str | None) -> tuple[str, str | None]:
    """(model hash, data hash or None) once the archive's model and its data are the verified ones, pointing at no other file."""
    model_sha = hashlib.sha256(model).hexdigest()
    if onnx_sha256 is not None and model_sha != onnx_sha256:
        raise IntegrityError(STAGE, f"{path.name} holds a {ARCHIVE_MODEL} other than the verified one", "rebuild the archive")
    where = f"{path.name}:{ARCHIVE_MODEL}"
    _, need = check_onnx_bytes(model, where, ARCHIVE_DATA)
    data_sha = None
    if ARCHIVE_DATA in zf.namelist():
        if need is None:
            raise IntegrityError(STAGE, f"{path.name} holds {ARCHIVE_DATA}, but its {ARCHIVE_MODEL} keeps its weights embedded", _FIX)
        check_data_size(need, zf.getinfo(ARCHIVE_DATA).file_size, where, ARCHIVE_DATA)
        data_sha = sha256_member(zf, ARCHIVE_DATA)
    elif need is not None:
        check_data_size(need, None, where, ARCHIVE_DATA)
    if onnx_sha256 is not None and data_sha != data_sha256:
        raise IntegrityError(STAGE, f"{path.name} holds a {ARCHIVE_DATA} other than the verified one", "rebuild the archive")
    return model_sha, data_sha


def read_contract(path: Path) -> dict:
    """The io_contract.json of an archive already verified (`verified_archive`, `private_archive`), as written."""
    with zipfile.ZipFile(path) as zf:
        return json.loads(zf.read(ARCHIVE_CONTRACT))


def tokenizer_sha256(contract: Any) -> str | None:
    """The sha256 of the tokenizer.json an archive carries (a text model's or a generation model's), or None where it has none."""
    for key in ("text_input", "generation"):
        section = contract.get(key) if isinstance(contract, dict) else None
        if isinstance(section, dict) and section.get("tokenizer"):
            return str(section.get("sha256"))
    return None


def pt2_sha256(contract: Any) -> str | None:
    """The sha256 of the AOTInductor package an archive serves with (its contract's engine "aotinductor"), or None."""
    section = contract.get("pt2") if isinstance(contract, dict) and contract.get("engine") == "aotinductor" else None
    return str(section.get("sha256")) if isinstance(section, dict) else None


def extract_model(path: Path, folder: Path) -> Path:
    """The archive's model.onnx (its model.onnx.data, streamed, tokenizer.json and model.pt2 where it has them) in `folder`.

    Run `inspect_archive` first."""
    with zipfile.ZipFile(path) as zf:
        for name in (ARCHIVE_MODEL, ARCHIVE_DATA, ARCHIVE_TOKENIZER, ARCHIVE_PT2):
            if name in zf.namelist():
                with zf.open(name) as src, open(folder / name, "wb") as dst:
                    shutil.copyfileobj(src, dst, _BLOCK)
    return folder / ARCHIVE_MODEL


def _inspect_verified(manifest: Manifest, variant: str | None, path: Path) -> dict:
    model = manifest.records[variant or ONNX]
    return inspect_archive(path, model.sha256, (model.details.get(EXTERNAL_DATA) or {}).get("sha256"))


def verified_archive(manifest: Manifest, variant: str | None, stage: str) -> tuple[Path, ArtifactRecord]:
    """The model's archive, or a variant's: its hash checked against the manifest, then what it holds."""
    path, rec = manifest.verified(archive_key(variant), stage)
    _inspect_verified(manifest, variant, path)
    return path, rec


def private_archive(manifest: Manifest, variant: str | None, stage: str, folder: Path) -> tuple[Path, ArtifactRecord, str]:
    """The verified archive copied into `folder` (the server's own, 0700) and checked there: serve the copy.
    Returns the copy, named `<model>-<version>.mar` (each version a file of its own, for rollback), its record and version.

    Checking the project's file and then handing its path to a server leaves a gap in
    which whoever can write model_store/ swaps it; the copy is hashed against the
    manifest and inspected after it is made, and no one else can write it. A copy that
    fails either check is removed; what the folder held before is untouched.
    """
    path, rec = manifest.verified(archive_key(variant), stage)
    incoming = folder / f".{path.name}.incoming"
    incoming.unlink(missing_ok=True)  # a link or someone else's file left there is not written through
    shutil.copyfile(path, incoming)
    try:
        digest = files.sha256_file(incoming)
        if digest != rec.sha256:
            raise IntegrityError(
                stage,
                f"{rec.path} changed while it was being copied to {folder} (sha256 {digest[:12]}…, recorded {rec.sha256[:12]}…)",
                _FIX,
            )
        version = _inspect_verified(manifest, variant, incoming)["version"]
    except BaseException:
        incoming.unlink(missing_ok=True)
        raise
    copy = folder / f"{path.stem}-{version}.mar"
    os.replace(incoming, copy)
    return copy, rec, version
