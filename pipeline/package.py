"""Stage 5: build `model_store/<model>.mar` with torch-model-archiver and check what is in it."""

from __future__ import annotations

import hashlib
import json
import shutil
import tempfile
import time
import zipfile
from pathlib import Path

import yaml
from model_archiver import ModelArchiver, ModelArchiverConfig

from . import files
from .errors import IntegrityError, PipelineError
from .manifest import Manifest
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


def inspect_archive(path: Path, onnx_sha256: str | None = None) -> dict:
    """Check an archive holds exactly the expected files, the right model, safe paths."""
    try:
        with zipfile.ZipFile(path) as zf:
            names = zf.namelist()
            bad = [n for n in names if n.startswith("/") or ".." in Path(n).parts]
            if bad:
                raise IntegrityError(STAGE, f"{path.name} has unsafe paths {bad}", "rebuild the archive with the package stage")
            got = set(names)
            if got != expected_members():
                raise IntegrityError(STAGE, f"{path.name} holds {sorted(got)}, expected exactly {sorted(expected_members())}",
                                     "rebuild the archive with the package stage")
            manifest = json.loads(zf.read("MAR-INF/MANIFEST.json"))
            model_sha = hashlib.sha256(zf.read(MODEL_NAME)).hexdigest()
            contract = json.loads(zf.read(CONTRACT_NAME))
            config = yaml.safe_load(zf.read(CONFIG_NAME))
    except zipfile.BadZipFile as exc:
        raise IntegrityError(STAGE, f"{path} is not a readable archive: {exc}", "rebuild it: make export") from None
    if onnx_sha256 is not None and model_sha != onnx_sha256:
        raise IntegrityError(STAGE, f"{path.name} holds a {MODEL_NAME} other than the verified one", "rebuild the archive")
    return {"members": sorted(names), "mar_manifest": manifest, "model_sha256": model_sha,
            "contract": contract, "model_config": config}


def run(settings: Settings) -> StageResult:
    spec, layout = resolve(settings)
    manifest = Manifest(layout.root, spec.name)
    onnx_path, onnx_rec = manifest.verified("onnx", STAGE)
    # The gate: only a model whose parity passed for exactly this ONNX file ships.
    parity_rec = manifest.records.get("parity")
    if parity_rec is None or parity_rec.inputs.get("onnx") != onnx_rec.sha256 or not parity_rec.details.get("passed"):
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
    # Stage everything in a private folder beside the store, then move the archive in atomically.
    with tempfile.TemporaryDirectory(prefix=f".{spec.name}-", dir=layout.model_store) as tmp:
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
