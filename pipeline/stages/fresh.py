"""What every stage asks first: is its artifact up to date, so that it can skip itself? And what an
optional stage (TorchScript, the AOTInductor package) records in place of an artifact it could not make."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

from pipeline.artifacts import files
from pipeline.artifacts.manifest import Manifest
from pipeline.artifacts.names import CHECKPOINT
from pipeline.errors import PipelineError
from pipeline.settings import Settings, StageResult
from pipeline.spec import ModelSpec


def up_to_date(
    manifest: Manifest,
    key: str,
    inputs: dict[str, str],
    stage_settings: dict[str, Any],
    settings: Settings,
    stage: str,
    outputs: Iterable[Path],
    *,
    label: str = "",
    gate: bool = False,
) -> StageResult | None:
    """The skipped result when `key` was made from these inputs and settings, is intact, and --force
    was not given (and, for a gate, when it passed); None when the stage must run."""
    fresh, why = manifest.is_fresh(key, inputs, stage_settings)
    if not fresh or settings.force:
        return None
    details = manifest.records[key].details
    if gate and not details.get("passed"):
        return None
    return StageResult(stage, True, tuple(outputs), 0.0, f"{label}up to date ({why})", details)


def stale(spec: ModelSpec, manifest: Manifest, key: str) -> str | None:
    """Why artifact `key` is older than what it was built from, or None when its whole chain is current.

    The chain is the manifest's: each record names the sha256 of the records it was made
    from, and the checkpoint's record the model file (or checkpoint folder) it came from.
    An edited model file, or a stage re-run without the ones after it, breaks a link.
    """
    records = manifest.records
    todo, seen = [key], set()
    while todo:
        name = todo.pop()
        rec = records.get(name)
        if rec is None or name in seen:
            continue
        seen.add(name)
        for upstream, sha256 in rec.inputs.items():
            if upstream in records and records[upstream].sha256 != sha256:
                return f"its {name} was made from an older {upstream} ({records[upstream].path} was rebuilt after it)"
            todo.append(upstream)
    made_from = records[CHECKPOINT].settings.get("model_source_sha256") if CHECKPOINT in records else None
    if made_from is not None and made_from != spec.source_sha256():
        source = spec.source if spec.source is not None else spec.name
        return f"{source} changed after the checkpoint was made from it"
    return None


def not_made_note(artifact: Path) -> Path:
    """Where a stage says, in place of `artifact` (model.ts, model.pt2), why it was not made."""
    return artifact.with_name(f"{artifact.name}.not-made.json")


def record_not_made(
    manifest: Manifest,
    key: str,
    artifact: Path,
    failure: PipelineError,
    inputs: dict[str, str],
    stage_settings: dict[str, Any],
    seconds: float,
    summary: str,
) -> StageResult:
    """Record that `artifact` was not made and why; an older one goes, so nothing serves or times it.

    The record's file is the note; `ArtifactRecord.not_made` reads the reason back. `summary`
    opens the stage's line (what was not made, and what the chain goes on with).
    """
    artifact.unlink(missing_ok=True)
    note = not_made_note(artifact)
    files.write_json(note, {"made": False, "problem": failure.problem, "what_to_do": failure.fix})
    details = {"not_made": failure.problem, "what_to_do": failure.fix}
    manifest.record(key, note, failure.stage, inputs, stage_settings, seconds, details)
    return StageResult(failure.stage, False, (note,), seconds, f"{summary}: {failure.problem}\n    what to do: {failure.fix}", details)
