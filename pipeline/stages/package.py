"""Stage 6: build `model_store/<model>.mar` with torch-model-archiver and check what is in it.

A model with external data gets its `model.onnx.data` as one more member, appended
after the archiver has run and stored, not deflated: deflate squeezes 7% out of float
weights at 14 MiB/s (about three minutes for 2.4 GB), and every reader would pay to
inflate it again. The archiver would also copy it whole through the system's temporary
folder first.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import time
import zipfile
from pathlib import Path

import yaml
from model_archiver import ModelArchiver, ModelArchiverConfig

from pipeline.artifacts import files
from pipeline.artifacts.archive import handler_source, inspect_archive, tokenizer_sha256
from pipeline.artifacts.manifest import ArtifactRecord, Manifest
from pipeline.artifacts.names import (
    ARCHIVE_CONFIG,
    ARCHIVE_CONTRACT,
    ARCHIVE_DATA,
    ARCHIVE_HANDLER,
    ARCHIVE_MODEL,
    ARCHIVE_PT2,
    ARCHIVE_TOKENIZER,
    CHECKPOINT,
    EXTERNAL_DATA,
    MAR,
    ONNX,
    PARITY,
    pt2_key,
)
from pipeline.artifacts.version import content_version
from pipeline.errors import IntegrityError, PipelineError
from pipeline.runtimes.pt2 import verified_package
from pipeline.serving.common.contract import declare
from pipeline.serving.ray import rayservice
from pipeline.settings import Layout, Settings, StageResult, cuda_precision, resolve
from pipeline.spec import ModelSpec, tokenizer_file
from pipeline.stages.fresh import up_to_date

STAGE = "package"
# How an archive's version is made (archive.content_version); a change here rebuilds every archive.
VERSION_SCHEME = "members-sha256"


def archive_contract(settings: Settings, spec: ModelSpec) -> dict:
    """The I/O contract the archive carries, with the CUDA precision that was verified
    and, where one was chosen, the intra-op threads each worker's session takes and a
    generation model's served concurrency."""
    io_contract = declare(spec, cuda_precision(settings, spec))
    if settings.serve_threads is not None:
        io_contract["intra_op_threads"] = settings.serve_threads
    if generation := io_contract.get("generation"):
        chosen = {
            "max_streams": settings.serve_max_streams,
            "max_queued": settings.serve_max_queued,
            "request_timeout_s": settings.serve_request_timeout_s,
        }
        generation.update({k: v for k, v in chosen.items() if v is not None})
    return io_contract


def model_config(settings: Settings, io_contract: dict | None = None) -> dict:
    """TorchServe's per-model settings, read from the archive at registration.

    A generation model is served with TorchServe's continuous batching: each handler call is
    one decode step for up to max_streams requests, which TorchServe hands back (streamed
    chunk by chunk) until each ends, new ones joining between steps; max_queued more may wait
    in its job queue, and past that it answers 503.
    """
    config = {
        "minWorkers": settings.serve_workers,
        "maxWorkers": settings.serve_workers,
        "batchSize": settings.serve_batch_size,
        "maxBatchDelay": settings.serve_max_batch_delay_ms,
        "responseTimeout": settings.serve_response_timeout_s,
    }
    generation = (io_contract or {}).get("generation")
    if generation:
        config |= {"batchSize": generation["max_streams"], "jobQueueSize": generation["max_queued"], "continuousBatching": True}
    return config


def append_data(mar: Path, data: Path, sha256: str) -> None:
    """Add the model's external data to the archive as `model.onnx.data`, stored, streamed, its hash checked on the way."""
    digest = hashlib.sha256()
    info = zipfile.ZipInfo.from_file(data, ARCHIVE_DATA)
    info.compress_type = zipfile.ZIP_STORED
    with zipfile.ZipFile(mar, "a") as zf, open(data, "rb") as src, zf.open(info, "w") as dst:
        while block := src.read(1 << 20):
            digest.update(block)
            dst.write(block)
    if digest.hexdigest() != sha256:
        raise IntegrityError(STAGE, f"{data} changed while it was being packaged", "run python -m pipeline package again")


def run(settings: Settings) -> StageResult:
    spec, layout = resolve(settings)
    manifest = Manifest(layout.root, spec.name, settings.model)
    onnx_path, onnx_rec = manifest.verified(ONNX, STAGE)
    # The gate: only a model whose parity passed for exactly this ONNX file ships.
    # Parity must also have run against the current checkpoint: after a retrain whose
    # export failed, the old model.onnx still matches the old parity pass.
    parity_rec = manifest.records.get(PARITY)
    checkpoint_rec = manifest.records.get(CHECKPOINT)
    current = (
        parity_rec is not None
        and parity_rec.inputs.get("onnx") == onnx_rec.sha256
        and checkpoint_rec is not None
        and parity_rec.inputs.get("checkpoint") == checkpoint_rec.sha256
    )
    if not current or parity_rec is None or not parity_rec.details.get("passed"):
        raise PipelineError(
            STAGE,
            f"{spec.name}: parity has not passed for the current {onnx_rec.path} (see {layout.reports.relative_to(layout.root)}/parity.md)",
            f"run the parity stage and fix what it reports: python -m pipeline parity --model {manifest.command}",
        )
    manifest.verified(PARITY, STAGE)
    io_contract = archive_contract(settings, spec)
    if parity_rec.settings.get("cuda_precision", "fp32") != io_contract["cuda_precision"]:
        raise PipelineError(
            STAGE,
            f"{spec.name}: parity verified CUDA precision {parity_rec.settings.get('cuda_precision', 'fp32')}, "
            f"this archive would serve {io_contract['cuda_precision']}",
            f"run parity with the same precision: python -m pipeline all --model {manifest.command} "
            f"--cuda-precision {io_contract['cuda_precision']}",
        )
    inputs = {"onnx": onnx_rec.sha256, "parity": parity_rec.sha256}
    package = None
    if settings.serve_engine == "aotinductor":
        package = served_package(spec, manifest, parity_rec, io_contract)
        inputs["pt2"] = package[1]
    data = onnx_rec.details.get(EXTERNAL_DATA)
    external = None
    if data:  # verified with model.onnx above; the graph's hash alone does not cover the weights
        inputs["onnx_data"] = data["sha256"]
        external = (layout.root / data["path"], data["sha256"])
    result = archive(settings, layout, manifest, MAR, onnx_path, onnx_rec.sha256, io_contract, inputs, external, package)
    if not result.skipped:
        rayservice.write(layout)  # the same archive on a Ray cluster: model_store/<model>.rayservice.yaml
    return result


def served_package(spec: ModelSpec, manifest: Manifest, parity_rec: ArtifactRecord, io_contract: dict) -> tuple[Path, str]:
    """The CPU's AOTInductor package for an archive that serves with it: made, intact, and the one parity checked.

    The contract names the engine, the package's sha256 (which every server checks the
    archive's member against) and what it is tied to (which every server checks its machine against).
    """
    again = f"python -m pipeline all --model {manifest.command} --engine aotinductor"
    if io_contract.get("generation"):
        raise PipelineError(
            STAGE, f"{spec.name} is a text-generation model: it serves from its ONNX graph with the cache", "drop --engine aotinductor"
        )
    rec = manifest.records.get(pt2_key("cpu"))
    if rec is None or rec.not_made:
        why = rec.not_made if rec is not None else "the pt2 stage has not run"
        raise PipelineError(STAGE, f"{spec.name}: no AOTInductor package to serve ({why})", f"make it and package again: {again}")
    path = verified_package(manifest, "cpu", STAGE)
    if parity_rec.inputs.get(pt2_key("cpu")) != rec.sha256:
        raise PipelineError(
            STAGE, f"{spec.name}: parity has not checked the current {rec.path}", f"run parity on it, then package: {again}"
        )
    io_contract["engine"] = "aotinductor"
    io_contract["pt2"] = {"file": ARCHIVE_PT2, "sha256": rec.sha256, "tied_to": rec.details["tied_to"]}
    return path, rec.sha256


def archive(
    settings: Settings,
    layout: Layout,
    manifest: Manifest,
    key: str,
    model_path: Path,
    model_sha256: str,
    io_contract: dict,
    inputs: dict[str, str],
    external_data: tuple[Path, str] | None = None,
    package: tuple[Path, str] | None = None,
) -> StageResult:
    """Build the archive recorded under `key` (the model's, or a variant's) from a verified ONNX file.

    The archive is named after the contract's model (`digits_cnn`, `digits_cnn-int8`);
    it is staged privately, checked member by member, and moved into the store atomically.
    `external_data` is the model's verified data file and its sha256, for a model that has one;
    `package` the verified AOTInductor package and its sha256, for an archive that serves with it.
    """
    name = io_contract["model"]
    path = layout.model_store / f"{name}.mar"
    handler = handler_source()
    inputs = {**inputs, "handler": files.sha256_bytes(handler)}
    config = model_config(settings, io_contract)
    stage_settings = {"model_config": config, "contract": io_contract, "version": VERSION_SCHEME}
    if skipped := up_to_date(manifest, key, inputs, stage_settings, settings, STAGE, (path,)):
        return skipped

    start = time.perf_counter()
    layout.model_store.mkdir(parents=True, exist_ok=True)
    # Stage everything in a private folder beside the store, then move the archive in
    # atomically. A killed run's folder carries its pid and is removed by the next run.
    files.sweep_stale(layout.model_store)
    with (
        files.no_room_is_an_error(path),
        tempfile.TemporaryDirectory(prefix=f".{name}-{os.getpid()}.", dir=layout.model_store) as tmp,
    ):
        staging = Path(tmp)
        _stage_model(staging, model_path, model_sha256, handler)
        extra = _stage_extra_files(staging, settings, io_contract, config)
        if package is not None:
            extra.append(_stage_copy(package[0], staging / ARCHIVE_PT2, package[1]))
        members = {
            p.name: files.sha256_file(p) for p in (staging / ARCHIVE_MODEL, staging / ARCHIVE_HANDLER, staging / ARCHIVE_CONFIG, *extra)
        }
        if external_data is not None:
            members[ARCHIVE_DATA] = external_data[1]
        version = content_version(members)
        built = _run_archiver(name, version, staging, extra)
        if external_data is not None:
            append_data(built, *external_data)
        inspected = inspect_archive(built, model_sha256, None if external_data is None else external_data[1])
        with files.atomic_path(path) as final:
            os.replace(built, final)  # the file just inspected, not a copy of it
    seconds = time.perf_counter() - start
    details = {"members": inspected["members"], "version": inspected["version"], "model_config": config}
    if external_data is not None:
        details["stored"] = [ARCHIVE_DATA]
    rec = manifest.record(key, path, STAGE, inputs, stage_settings, seconds, details)
    return StageResult(STAGE, False, (path,), seconds, f"{rec.path} ({files.human_bytes(rec.bytes)})", details)


def _stage_model(staging: Path, model_path: Path, model_sha256: str, handler: bytes) -> None:
    """The model file, its copy checked against the verified hash, and the handler."""
    _stage_copy(model_path, staging / ARCHIVE_MODEL, model_sha256)
    (staging / ARCHIVE_HANDLER).write_bytes(handler)


def _stage_copy(source: Path, target: Path, sha256: str) -> Path:
    """A verified file copied into the staging folder, the copy checked against its hash."""
    shutil.copyfile(source, target)
    if files.sha256_file(target) != sha256:
        raise IntegrityError(STAGE, f"{source} changed while it was being packaged", "run python -m pipeline package again")
    return target


def _stage_extra_files(staging: Path, settings: Settings, io_contract: dict, config: dict) -> list[Path]:
    """The contract, TorchServe's model config and, for a text model, its tokenizer; returns the archiver's extra files."""
    (staging / ARCHIVE_CONTRACT).write_text(json.dumps(io_contract, indent=2) + "\n")
    (staging / ARCHIVE_CONFIG).write_text(yaml.safe_dump(config, sort_keys=False))
    extra = [staging / ARCHIVE_CONTRACT]
    tokenizer = tokenizer_sha256(io_contract)
    if tokenizer:  # the checkpoint's tokenizer, the very one whose hash the contract records
        shutil.copyfile(tokenizer_file(resolve(settings)[0]), staging / ARCHIVE_TOKENIZER)
        if files.sha256_file(staging / ARCHIVE_TOKENIZER) != tokenizer:
            raise IntegrityError(
                STAGE, f"the model's tokenizer changed while {io_contract['model']} was being packaged", "run the package stage again"
            )
        extra.append(staging / ARCHIVE_TOKENIZER)
    return extra


def _run_archiver(name: str, version: str, staging: Path, extra: list[Path]) -> Path:
    """torch-model-archiver over the staged members; returns the archive it built, still in the staging folder."""
    out = staging / "out"
    out.mkdir()
    # The archiver copies the members into gettempdir()/<model name> and zips that folder: a
    # name shared by every process packaging the model (one removed it under another's zip),
    # and a place other local users can write. Its temporary folder is ours while it runs.
    (staging / "tmp").mkdir(mode=0o700)
    previous, tempfile.tempdir = tempfile.tempdir, str(staging / "tmp")
    try:
        ModelArchiver.generate_model_archive(
            ModelArchiverConfig(
                model_name=name,
                handler=str(staging / ARCHIVE_HANDLER),
                version=version,
                serialized_file=str(staging / ARCHIVE_MODEL),
                extra_files=",".join(str(p) for p in extra),
                export_path=str(out),
                archive_format="zip-store",  # weights barely compress: deflate cost 25 s on ViT-B/16 for a few percent
                force=True,
                config_file=str(staging / ARCHIVE_CONFIG),
            )
        )
    except SystemExit as exc:  # the archiver exits on bad arguments instead of raising
        raise PipelineError(STAGE, f"torch-model-archiver failed (exit {exc.code})", "see the archiver's message above") from None
    finally:
        tempfile.tempdir = previous
    return out / f"{name}.mar"
