"""`artifacts/<model>/manifest.json`: what made each artifact, from what, and its hash.

Stages read their inputs through `Manifest.verified`, which checks the file's sha256
against the record before anything parses it, and decide whether to skip with
`Manifest.is_fresh`.
"""

from __future__ import annotations

import datetime
import json
import shlex
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from pipeline.artifacts import cost, files
from pipeline.artifacts.environment import fingerprint
from pipeline.artifacts.names import EXTERNAL_DATA
from pipeline.errors import IntegrityError

FORMAT = 1


@dataclass(frozen=True)
class ArtifactRecord:
    """One artifact: where it is (relative to the project root) and how it was made."""

    path: str
    stage: str
    sha256: str
    bytes: int
    inputs: dict[str, str]
    settings: dict[str, Any]
    seconds: float
    created: str
    environment: dict[str, Any]
    details: dict[str, Any] = field(default_factory=dict)
    # The stage's peak resident memory while it made this artifact (MiB; 0 in older manifests).
    peak_rss_mb: float = 0.0

    @property
    def not_made(self) -> str | None:
        """Why the stage could not make this artifact (the record's file is then a note that says so), or None."""
        return self.details.get("not_made")


class Manifest:
    """The manifest of one model's artifacts; every change is written atomically."""

    def __init__(self, root: Path, model: str, command: str | None = None):
        self.root = Path(root)
        self.model = model
        # The model as the user names it on the command line (hf:PATH, a file's path), for the commands in messages.
        self.command = shlex.quote(command or model)
        self.path = self.root / "artifacts" / model / "manifest.json"
        self.records: dict[str, ArtifactRecord] = {}
        if self.path.exists():
            self._load()

    def _load(self) -> None:
        try:
            data = json.loads(self.path.read_text())
            self.records = {key: ArtifactRecord(**rec) for key, rec in data["artifacts"].items()}
        except (json.JSONDecodeError, KeyError, TypeError, UnicodeDecodeError) as exc:
            raise IntegrityError(
                "manifest",
                f"{self.path} is not a readable manifest ({exc})",
                f"remove it and rebuild: rm {self.path} && python -m pipeline all --model {self.command}",
            ) from None

    def record(
        self,
        key: str,
        path: Path,
        stage: str,
        inputs: dict[str, str],
        settings: dict[str, Any],
        seconds: float,
        details: dict[str, Any] | None = None,
    ) -> ArtifactRecord:
        """Hash `path` and record it under `key`, replacing any earlier record.

        The record carries the stage's peak memory so far (`cost.peak_mb`).
        """
        path = Path(path)
        rec = ArtifactRecord(
            path=str(path.resolve().relative_to(self.root.resolve())),
            stage=stage,
            sha256=files.sha256_file(path),
            bytes=path.stat().st_size,
            inputs=dict(inputs),
            settings=_jsonable(settings),
            seconds=round(seconds, 3),
            created=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            environment=fingerprint(),
            details=_jsonable(details or {}),
            peak_rss_mb=cost.peak_mb(),
        )
        self.records[key] = rec
        self.save()
        return rec

    def forget(self, key: str) -> None:
        if self.records.pop(key, None) is not None:
            self.save()

    def save(self) -> None:
        files.write_json(
            self.path,
            {
                "format": FORMAT,
                "model": self.model,
                "artifacts": {key: asdict(rec) for key, rec in self.records.items()},
            },
        )

    def verified(self, key: str, stage: str) -> tuple[Path, ArtifactRecord]:
        """The path of artifact `key` after checking its hash; refuses a mismatch.

        `stage` is the stage asking, for the error message.
        """
        rec = self.records.get(key)
        if rec is None:
            raise IntegrityError(
                stage,
                f"{self.model}: no {key} recorded in {self._rel(self.path)}; its stage has not run",
                f"run the earlier stages first: python -m pipeline all --model {self.command}",
            )
        # An ONNX file over 2 GiB comes with its external data: both are checked.
        for rel, sha256, size_recorded in _files(rec):
            path = self.root / rel
            # A link (or a recorded path with `..`) would let the hash vouch for a file
            # outside the project that someone else controls.
            if path.is_symlink() or not path.resolve().is_relative_to(self.root.resolve()):
                raise IntegrityError(
                    stage,
                    f"{rel} is a symbolic link or lies outside {self.root}; refusing to follow it",
                    f"remove it and rebuild it: rm {path} && python -m pipeline {rec.stage} --model {self.command} --force",
                )
            if not path.exists():
                raise IntegrityError(
                    stage,
                    f"{rel} is missing (recorded by the {rec.stage} stage)",
                    f"rebuild it: python -m pipeline {rec.stage} --model {self.command} --force",
                )
            size = path.stat().st_size
            digest = files.sha256_file(path)
            if digest != sha256 or size != size_recorded:
                raise IntegrityError(
                    stage,
                    f"{rel} does not match the manifest: sha256 {digest[:12]}… ({size} bytes), "
                    f"recorded {sha256[:12]}… ({size_recorded} bytes). It was changed, truncated or "
                    f"corrupted after the {rec.stage} stage wrote it; refusing to load it",
                    f"rebuild it: python -m pipeline {rec.stage} --model {self.command} --force",
                )
        return self.root / rec.path, rec

    def is_fresh(self, key: str, inputs: dict[str, str], settings: dict[str, Any]) -> tuple[bool, str]:
        """Whether artifact `key` exists intact and was made from these inputs and settings.

        Every stage asks this first, so it also clears what a killed earlier run left
        in the artifact's folder (temporary files of dead processes).
        """
        rec = self.records.get(key)
        files.sweep_stale(self.path.parent)
        if rec is not None:
            files.sweep_stale((self.root / rec.path).parent)
        if rec is None:
            return False, "not built yet"
        for rel, sha256, size in _files(rec):
            path = self.root / rel
            if not path.exists():
                return False, f"{rel} is missing"
            if path.stat().st_size != size or files.sha256_file(path) != sha256:
                return False, f"{rel} changed since it was written"
        if rec.inputs != inputs:
            return False, "its inputs changed"
        if rec.settings != _jsonable(settings):
            return False, "its settings changed"
        return True, "inputs and settings unchanged"

    def _rel(self, path: Path) -> str:
        try:
            return str(path.relative_to(self.root))
        except ValueError:
            return str(path)


def _files(rec: ArtifactRecord) -> list[tuple[str, str, int]]:
    """(path, sha256, bytes) of the record's file, and of its external data where it has one."""
    out = [(rec.path, rec.sha256, rec.bytes)]
    data = rec.details.get(EXTERNAL_DATA)
    if data:
        out.append((data["path"], data["sha256"], int(data["bytes"])))
    return out


def _jsonable(obj: Any) -> Any:
    """Round-trip through JSON so stored and freshly computed settings compare equal."""
    return json.loads(json.dumps(obj, default=str))
