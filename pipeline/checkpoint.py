"""Checkpoints as safetensors: weights plus the args that rebuild the model, no pickle."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Mapping

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, safe_open, save_file

from . import files
from .errors import IntegrityError
from .manifest import Manifest
from .spec import ModelSpec


def save(path: Path, state_dict: Mapping[str, torch.Tensor], model: str, model_args: Mapping[str, Any]) -> None:
    tensors = {k: v.detach().contiguous().cpu() for k, v in state_dict.items()}
    # One metadata key: safetensors writes several keys in a random order, which
    # would make the same weights hash differently from run to run.
    metadata = {"pipeline": json.dumps({"model": model, "model_args": dict(model_args)}, sort_keys=True)}
    with files.atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata=metadata)


def load_model(manifest: Manifest, spec: ModelSpec, stage: str) -> tuple[torch.nn.Module, str]:
    """The eager model rebuilt from its verified checkpoint, in eval mode, and the checkpoint's sha256."""
    path, rec = manifest.verified("checkpoint", stage)
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
