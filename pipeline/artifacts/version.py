"""An archive's version: what TorchServe registers it as, what every answer names, what update and rollback move between.

Light on purpose: a server's worker reads it at start, before anything else is imported.
"""

from __future__ import annotations

import hashlib


def content_version(hashes: dict[str, str]) -> str:
    """An archive's version: 12 hex digits of the sha256 over its members' names and sha256s (all but MANIFEST.json).

    TorchServe reads a model's version from the archive's own MANIFEST.json, so the version cannot be the
    hash of the file that holds it; this one changes exactly when what is served changes (the model, its
    data, the handler, the contract, the model config, the tokenizer or the package), and any server and
    any client can recompute it from the archive.
    """
    lines = "".join(f"{name} {sha}\n" for name, sha in sorted(hashes.items()))
    return hashlib.sha256(lines.encode()).hexdigest()[:12]


def archive_version(mar_manifest: dict) -> str | None:
    """The version an archive's MANIFEST.json records (torch-model-archiver's modelVersion)."""
    model = mar_manifest.get("model") if isinstance(mar_manifest, dict) else None
    version = model.get("modelVersion") if isinstance(model, dict) else None
    return version if isinstance(version, str) else None
