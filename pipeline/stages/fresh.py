"""What every stage asks first: is its artifact up to date, so that it can skip itself?"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

from pipeline.artifacts.manifest import Manifest
from pipeline.settings import Settings, StageResult


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
