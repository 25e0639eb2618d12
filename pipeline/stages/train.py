"""Stage 1: train the model and write a safetensors checkpoint."""

from __future__ import annotations

import time

import torch

from pipeline.artifacts import checkpoint
from pipeline.artifacts.manifest import Manifest
from pipeline.artifacts.names import CHECKPOINT
from pipeline.settings import Settings, StageResult, resolve
from pipeline.stages.fresh import up_to_date

STAGE = "train"


def run(settings: Settings) -> StageResult:
    spec, layout = resolve(settings)
    manifest = Manifest(layout.root, spec.name, settings.model)
    stage_settings = {"seed": settings.seed, "model_source_sha256": spec.source_sha256()}
    if skipped := up_to_date(manifest, CHECKPOINT, {}, stage_settings, settings, STAGE, (layout.checkpoint,)):
        return skipped

    start = time.perf_counter()
    # Single-threaded and deterministic, so the same seed gives the same bytes anywhere.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    try:
        result = spec.train(settings.seed)
    finally:
        torch.use_deterministic_algorithms(False)
        torch.set_num_threads(threads)
    checkpoint.save(layout.checkpoint, result.state_dict, spec.name, result.model_args)
    seconds = time.perf_counter() - start
    details = {"metrics": dict(result.metrics), "model_args": dict(result.model_args)}
    manifest.record(CHECKPOINT, layout.checkpoint, STAGE, {}, stage_settings, seconds, details)
    metrics = ", ".join(f"{k} {v:.6g}" for k, v in result.metrics.items()) or "no metrics reported"
    return StageResult(STAGE, False, (layout.checkpoint,), seconds, f"trained: {metrics}", details)
