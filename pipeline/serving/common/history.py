"""The versions a server has served, oldest first (`versions.json` in its run folder): what rollback goes back to.

Each entry names the server's own copy of that version's archive (checked when it was copied) and its sha256,
so a rollback serves the very file that was served, checked again, or nothing.
"""

from __future__ import annotations

import hmac
import json
from dataclasses import asdict, dataclass
from pathlib import Path

from pipeline.artifacts import files
from pipeline.artifacts.archive import inspect_archive
from pipeline.errors import IntegrityError, PipelineError
from pipeline.serving.common import STAGE

HISTORY = "versions.json"


@dataclass(frozen=True)
class Served:
    """One version a server has served."""

    version: str
    archive: str  # the server's copy of the archive, relative to its run folder
    sha256: str


def read(folder: Path) -> list[Served]:
    path = folder / HISTORY
    if not path.exists():
        return []
    return [Served(**entry) for entry in json.loads(path.read_text())]


def record(folder: Path, served: Served) -> None:
    """`served` as the newest entry (moved to the end where it was there already)."""
    history = [s for s in read(folder) if s.version != served.version] + [served]
    files.write_json(folder / HISTORY, [asdict(s) for s in history])


def before(folder: Path, current: str) -> Served | None:
    """The version served before `current`, or None."""
    versions = [s.version for s in read(folder)]
    if current not in versions or versions.index(current) == 0:
        return None
    return read(folder)[versions.index(current) - 1]


def rollback_target(folder: Path, model: str, current: str, update_command: str) -> tuple[Served, Path]:
    """The version served before `current` and its copy, checked again (its recorded sha256 and version), or why not."""
    previous = before(folder, current)
    if previous is None:
        served = ", ".join(s.version for s in read(folder)) or "none recorded"
        raise PipelineError(
            STAGE,
            f"{model} has no version before {current} on this server (served: {served})",
            f"rollback goes back one version; {update_command} serves the model's current archive",
        )
    path = folder / previous.archive
    if not path.is_file():
        raise PipelineError(
            STAGE, f"{previous.archive}, version {previous.version}, is no longer in {folder}", f"rebuild it and {update_command}"
        )
    digest = files.sha256_file(path)
    if not hmac.compare_digest(digest, previous.sha256):
        raise IntegrityError(
            STAGE,
            f"{path} changed since it was served (sha256 {digest[:12]}…, recorded {previous.sha256[:12]}…): not serving it",
            f"rebuild the archive you want and {update_command}",
        )
    if inspect_archive(path)["version"] != previous.version:
        raise IntegrityError(STAGE, f"{path} is not version {previous.version}", f"rebuild the archive you want and {update_command}")
    return previous, path
