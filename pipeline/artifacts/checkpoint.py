"""Checkpoints as safetensors: weights plus the args that rebuild the model, no pickle."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Mapping

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, safe_open, save_file

from pipeline.artifacts import files
from pipeline.errors import IntegrityError
from pipeline.artifacts.manifest import Manifest
from pipeline.spec import ModelSpec
from pipeline.artifacts.names import CHECKPOINT


def save(path: Path, state_dict: Mapping[str, torch.Tensor], model: str, model_args: Mapping[str, Any]) -> None:
    tensors = {k: v.detach().contiguous().cpu() for k, v in state_dict.items()}
    # One metadata key: safetensors writes several keys in a random order, which
    # would make the same weights hash differently from run to run.
    metadata = {"pipeline": json.dumps({"model": model, "model_args": dict(model_args)}, sort_keys=True)}
    with files.atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata=metadata)


# What a file that is not safetensors starts with when it is a pickle in disguise.
_PICKLE_MAGIC = {b"PK\x03\x04": "a zip archive (torch.save's format, pickled code inside)",
                 b"\x80": "a Python pickle (unpickling it would run code)"}
_MAX_HEADER = 100_000_000  # safetensors' own limit on the JSON header


def check_header(path: Path, stage: str) -> None:
    """Refuse a checkpoint that is not safetensors before any parser reads it.

    The manifest's hash proves the file is the one recorded, not that it is safe:
    whoever can write the checkpoint can often write the manifest too.
    """
    with open(path, "rb") as f:
        head = f.read(9)
    size = path.stat().st_size
    fix = f"retrain to get a safetensors checkpoint: python -m pipeline train --model {path.parent.name} --force"
    header_len = int.from_bytes(head[:8], "little") if len(head) >= 8 else -1
    if 2 <= header_len <= min(_MAX_HEADER, size - 8) and head[8:9] == b"{":
        return  # a safetensors header (its length's low byte may well be 0x80, like pickle's opcode)
    for magic, what in _PICKLE_MAGIC.items():
        if head.startswith(magic):
            raise IntegrityError(stage, f"{path} is {what}, not safetensors; refusing to load it", fix)
    raise IntegrityError(stage, f"{path} does not start with a safetensors header; refusing to load it", fix)


def load_model(manifest: Manifest, spec: ModelSpec, stage: str) -> tuple[torch.nn.Module, str]:
    """The eager model rebuilt from its verified checkpoint, in eval mode, and the checkpoint's sha256."""
    path, rec = manifest.verified(CHECKPOINT, stage)
    check_header(path, stage)
    try:
        with safe_open(str(path), framework="pt") as f:
            metadata = f.metadata() or {}
        state = load_file(str(path))
        model_args = json.loads(metadata["pipeline"])["model_args"]
    except (SafetensorError, json.JSONDecodeError, OSError, KeyError, TypeError) as exc:
        raise IntegrityError(stage, f"{rec.path} is not a readable safetensors checkpoint: {exc}",
                             f"retrain: python -m pipeline train --model {spec.name} --force") from None
    model = spec.build(model_args)
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise IntegrityError(stage, f"{rec.path} does not fit the model {spec.name} builds: {exc}",
                             f"retrain after changing the model: python -m pipeline train --model {spec.name} --force") from None
    return model.eval(), rec.sha256
