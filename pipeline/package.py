"""Stage 5: build `model_store/<model>.mar` with torch-model-archiver and check what is in it."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import stat
import tempfile
import time
import zipfile
from pathlib import Path

import yaml
from model_archiver import ModelArchiver, ModelArchiverConfig

from . import files
from .errors import IntegrityError, PipelineError
from .manifest import Manifest
from .safety import check_onnx_bytes
from .stage import Settings, StageResult, resolve

STAGE = "package"
HANDLER = Path(__file__).resolve().parent.parent / "handlers" / "onnx_handler.py"
CONTRACT_NAME = "io_contract.json"
CONFIG_NAME = "model-config.yaml"
MODEL_NAME = "model.onnx"
VERSION = "1.0"


def model_config(settings: Settings) -> dict:
    """TorchServe's per-model settings, read from the archive at registration."""
    return {
        "minWorkers": settings.serve_workers,
        "maxWorkers": settings.serve_workers,
        "batchSize": settings.serve_batch_size,
        "maxBatchDelay": settings.serve_max_batch_delay_ms,
        "responseTimeout": settings.serve_response_timeout_s,
    }


def expected_members() -> set[str]:
    return {"MAR-INF/MANIFEST.json", MODEL_NAME, HANDLER.name, CONTRACT_NAME, CONFIG_NAME}


# Limits checked on the sizes an archive declares, before anything is decompressed.
# An ONNX file cannot exceed protobuf's 2 GiB; real weights compress by 1-2x, while a
# zip bomb's deflate stream expands up to ~1000x.
MAX_MEMBER_BYTES = 2 << 30
MAX_TOTAL_BYTES = 4 << 30
MAX_RATIO = 100
RATIO_FLOOR_BYTES = 1 << 20  # small members (configs, text) may compress better


def _unsafe_name(name: str) -> bool:
    parts = name.replace("\\", "/").split("/")
    return (name.startswith(("/", "\\")) or (len(name) > 1 and name[1] == ":")
            or ".." in parts or "\x00" in name)


def _check_members(path: Path, infos: list[zipfile.ZipInfo]) -> None:
    """Refuse unsafe entries by their headers alone: nothing is read or extracted yet."""
    fix = "rebuild the archive with the package stage: python -m pipeline package --force"
    names = [i.filename for i in infos]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise IntegrityError(STAGE, f"{path.name} has duplicate entries {dupes}; which one a reader takes is undefined", fix)
    bad = [n for n in names if _unsafe_name(n)]
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
            _check_members(path, infos)
            names = [i.filename for i in infos]
            got = set(names)
            if got != expected_members():
                raise IntegrityError(STAGE, f"{path.name} holds {sorted(got)}, expected exactly {sorted(expected_members())}",
                                     "rebuild the archive with the package stage")
            manifest = json.loads(zf.read("MAR-INF/MANIFEST.json"))
            model = zf.read(MODEL_NAME)
            contract = json.loads(zf.read(CONTRACT_NAME))
            config = yaml.safe_load(zf.read(CONFIG_NAME))
    except zipfile.BadZipFile as exc:
        raise IntegrityError(STAGE, f"{path} is not a readable archive: {exc}", "rebuild it: make export") from None
    model_sha = hashlib.sha256(model).hexdigest()
    if onnx_sha256 is not None and model_sha != onnx_sha256:
        raise IntegrityError(STAGE, f"{path.name} holds a {MODEL_NAME} other than the verified one", "rebuild the archive")
    check_onnx_bytes(model, f"{path.name}:{MODEL_NAME}")
    return {"members": sorted(names), "mar_manifest": manifest, "model_sha256": model_sha,
            "contract": contract, "model_config": config}


def run(settings: Settings) -> StageResult:
    spec, layout = resolve(settings)
    manifest = Manifest(layout.root, spec.name)
    onnx_path, onnx_rec = manifest.verified("onnx", STAGE)
    # The gate: only a model whose parity passed for exactly this ONNX file ships.
    # Parity must also have run against the current checkpoint: after a retrain whose
    # export failed, the old model.onnx still matches the old parity pass.
    parity_rec = manifest.records.get("parity")
    checkpoint_rec = manifest.records.get("checkpoint")
    current = (parity_rec is not None and parity_rec.inputs.get("onnx") == onnx_rec.sha256
               and checkpoint_rec is not None and parity_rec.inputs.get("checkpoint") == checkpoint_rec.sha256)
    if not current or not parity_rec.details.get("passed"):
        raise PipelineError(STAGE, f"{spec.name}: parity has not passed for the current {onnx_rec.path} "
                            f"(see {layout.reports.relative_to(layout.root)}/parity.md)",
                            f"run the parity stage and fix what it reports: python -m pipeline parity --model {spec.name}")
    manifest.verified("parity", STAGE)
    if not HANDLER.exists():
        raise IntegrityError(STAGE, f"handler {HANDLER} is missing", "restore handlers/ from the repository")
    inputs = {"onnx": onnx_rec.sha256, "parity": parity_rec.sha256, "handler": files.sha256_file(HANDLER)}
    config = model_config(settings)
    stage_settings = {"model_config": config, "contract": spec.contract(), "version": VERSION}
    fresh, why = manifest.is_fresh("mar", inputs, stage_settings)
    if fresh and not settings.force:
        return StageResult(STAGE, True, (layout.mar,), 0.0, f"up to date ({why})", manifest.records["mar"].details)

    start = time.perf_counter()
    layout.model_store.mkdir(parents=True, exist_ok=True)
    # Stage everything in a private folder beside the store, then move the archive in
    # atomically. A killed run's folder carries its pid and is removed by the next run.
    files.sweep_stale(layout.model_store)
    with files.no_room_is_an_error(layout.mar), \
            tempfile.TemporaryDirectory(prefix=f".{spec.name}-{os.getpid()}.", dir=layout.model_store) as tmp:
        staging = Path(tmp)
        shutil.copyfile(onnx_path, staging / MODEL_NAME)
        if files.sha256_file(staging / MODEL_NAME) != onnx_rec.sha256:
            raise IntegrityError(STAGE, f"{onnx_rec.path} changed while it was being packaged", "run make export again")
        (staging / CONTRACT_NAME).write_text(json.dumps(spec.contract(), indent=2) + "\n")
        (staging / CONFIG_NAME).write_text(yaml.safe_dump(config, sort_keys=False))
        out = staging / "out"
        out.mkdir()
        try:
            ModelArchiver.generate_model_archive(ModelArchiverConfig(
                model_name=spec.name,
                handler=str(HANDLER),
                version=VERSION,
                serialized_file=str(staging / MODEL_NAME),
                extra_files=str(staging / CONTRACT_NAME),
                export_path=str(out),
                archive_format="default",
                force=True,
                config_file=str(staging / CONFIG_NAME),
            ))
        except SystemExit as exc:  # the archiver exits on bad arguments instead of raising
            raise PipelineError(STAGE, f"torch-model-archiver failed (exit {exc.code})", "see the archiver's message above") from None
        built = out / f"{spec.name}.mar"
        details = inspect_archive(built, onnx_rec.sha256)
        with files.atomic_path(layout.mar) as final:
            shutil.copyfile(built, final)
    seconds = time.perf_counter() - start
    details = {"members": details["members"], "model_config": config}
    rec = manifest.record("mar", layout.mar, STAGE, inputs, stage_settings, seconds, details)
    return StageResult(STAGE, False, (layout.mar,), seconds, f"{rec.path} ({rec.bytes / 1024:.1f} KiB)", details)
