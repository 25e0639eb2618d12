"""Checkpoints as safetensors: weights plus the args that rebuild the model, no pickle."""

from __future__ import annotations

import functools
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import safe_open, save_file

from pipeline.artifacts import files
from pipeline.artifacts.manifest import Manifest
from pipeline.artifacts.names import CHECKPOINT
from pipeline.errors import IntegrityError, PipelineError
from pipeline.spec import ModelSpec


def untie(state_dict: Mapping[str, Any], model: str) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """The tensors to write, and each tied name -> the name whose tensor it shares.

    Real models tie weights (GPT-2's `lm_head.weight` is `transformer.wte.weight`), and
    safetensors refuses to write one storage twice. A tie is written once and recorded;
    `load_model` restores it. A view that overlaps another without being the same tensor
    is written as a copy of its own values.
    """
    tensors: dict[str, torch.Tensor] = {}
    aliases: dict[str, str] = {}
    seen: dict[tuple, str] = {}
    storages: set[int] = set()
    for name, value in state_dict.items():
        if not isinstance(value, torch.Tensor):
            raise PipelineError(
                "train",
                f"{model}: the state_dict entry {name!r} is a {type(value).__name__}, not a tensor; a checkpoint holds tensors only",
                "return model.state_dict() from train(), and put other values in model_args (JSON) instead",
            )
        tensor = value.detach().cpu()
        key = (tensor.untyped_storage().data_ptr(), tensor.storage_offset(), tuple(tensor.shape), tuple(tensor.stride()), tensor.dtype)
        if tensor.numel() and key in seen:
            aliases[name] = seen[key]
            continue
        seen[key] = name
        storage = tensor.untyped_storage().data_ptr()
        shared = tensor.numel() and storage in storages
        storages.add(storage)
        tensors[name] = tensor.clone() if shared else tensor.contiguous()
    return tensors, aliases


def save(path: Path, state_dict: Mapping[str, torch.Tensor], model: str, model_args: Mapping[str, Any]) -> None:
    tensors, aliases = untie(state_dict, model)
    meta: dict[str, Any] = {"model": model, "model_args": dict(model_args)}
    if aliases:
        meta["aliases"] = aliases
    try:
        # One metadata key: safetensors writes several keys in a random order, which
        # would make the same weights hash differently from run to run.
        metadata = {"pipeline": json.dumps(meta, sort_keys=True)}
    except TypeError as exc:
        raise PipelineError(
            "train",
            f"{model}: model_args cannot be written as JSON ({exc})",
            "return only JSON values (numbers, strings, lists, dicts) in model_args",
        ) from None
    with files.atomic_path(path) as tmp:
        try:
            save_file(tensors, str(tmp), metadata=metadata)
        except (SafetensorError, ValueError, TypeError, RuntimeError) as exc:
            if files.no_room(exc):
                raise
            raise PipelineError(
                "train",
                f"{model}: safetensors cannot hold this state_dict: {type(exc).__name__}: {str(exc).strip()[:400]}",
                "return plain dense tensors from train() (model.state_dict() of an ordinary nn.Module)",
            ) from None


# What a file that is not safetensors starts with when it is a pickle in disguise.
_PICKLE_MAGIC = {
    b"PK\x03\x04": "a zip archive (torch.save's format, pickled code inside)",
    b"\x80": "a Python pickle (unpickling it would run code)",
}
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


# safetensors' dtype names, as the file's header spells them.
DTYPES = {
    "F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16, "I64": torch.int64,
    "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8, "BOOL": torch.bool,
}  # fmt: skip


def _fill(model: torch.nn.Module, path: Path, aliases: dict[str, str], where: str) -> None:
    """Read the file's tensors straight into the model's own, as load_state_dict(strict=True) would.

    Read with readinto, one tensor at a time, not through safetensors' memory map: a mapped
    file's pages count as the process's memory once touched, so load_file + load_state_dict
    held a 2.4 GB model twice. safe_open has already checked the file's layout.
    """
    target = model.state_dict()
    with open(path, "rb") as f:
        size = int.from_bytes(f.read(8), "little")
        header = json.loads(f.read(size))
        header.pop("__metadata__", None)
        missing = sorted(set(target) - set(header) - set(aliases))
        unexpected = sorted((set(header) | set(aliases)) - set(target))
        if missing or unexpected:
            raise ValueError(f"{where}: missing {missing[:5]}, unexpected {unexpected[:5]}")
        with torch.no_grad():
            for name, tensor in target.items():
                entry = header[aliases.get(name, name)]
                begin, end = entry["data_offsets"]
                if DTYPES.get(entry["dtype"]) != tensor.dtype or list(entry["shape"]) != list(tensor.shape):
                    raise ValueError(
                        f"{where}: {name} is {entry['dtype']} {entry['shape']} in the checkpoint, "
                        f"{tensor.dtype} {list(tensor.shape)} in the model"
                    )
                dest = tensor if tensor.is_contiguous() else torch.empty_like(tensor, memory_format=torch.contiguous_format)
                f.seek(8 + size + begin)
                if f.readinto(dest.reshape(-1).view(torch.uint8).numpy().data) != end - begin:
                    raise ValueError(f"{where}: {name} is cut short in the file")
                if dest is not tensor:
                    tensor.copy_(dest)


def with_spec_outputs(model: torch.nn.Module, spec: ModelSpec) -> torch.nn.Module:
    """The model, its forward's outputs given as the spec's tuple, in the spec's order.

    A forward may return a tensor, a tuple or list of them, or a dict, a transformers
    `ModelOutput` or a named tuple, whose entries are read by the spec's output names:
    tracing and the exporters take tensors and tuples, and parity compares by position.
    The instance's own forward is wrapped, not the module: parameter names (and the ONNX
    graph's initializers) stay the model's, and `functools.wraps` keeps its signature, by
    which torch.export maps the dynamic axes onto the argument names.
    """
    original = model.forward
    names = tuple(t.name for t in spec.outputs)

    @functools.wraps(original)
    def forward(*args: Any, **kwargs: Any) -> Any:
        return in_spec_order(spec.name, names, original(*args, **kwargs))

    model.forward = forward
    return model


def in_spec_order(model: str, names: tuple[str, ...], out: Any) -> Any:
    """`out` as it is, or, for outputs given by name, the named entries as a tuple in `names`' order."""
    if isinstance(out, Mapping):
        entries, kind = dict(out), f"a dict ({type(out).__name__})"
    elif isinstance(out, tuple) and hasattr(out, "_fields"):
        entries, kind = dict(zip(out._fields, out)), f"a named tuple ({type(out).__name__})"
    else:
        return out
    missing = [n for n in names if n not in entries]
    if missing:
        raise PipelineError(
            "model",
            f"{model}: forward() returns {kind} with {sorted(entries)}, without the spec's output(s) {missing}",
            "name the spec's outputs after the entries forward() returns (TensorSpec(name, ...)), in the order they should be served",
        )
    wrong = [n for n in names if not isinstance(entries[n], torch.Tensor)]
    if wrong:
        raise PipelineError(
            "model",
            f"{model}: forward()'s {wrong} are not tensors ({', '.join(type(entries[n]).__name__ for n in wrong)})",
            "return tensors for the spec's outputs",
        )
    return tuple(entries[n] for n in names)


def load_model(manifest: Manifest, spec: ModelSpec, stage: str) -> tuple[torch.nn.Module, str]:
    """The eager model rebuilt from its verified checkpoint, in eval mode, and the checkpoint's sha256."""
    path, rec = manifest.verified(CHECKPOINT, stage)
    check_header(path, stage)
    unreadable = f"retrain: python -m pipeline train --model {manifest.command} --force"
    try:
        with safe_open(str(path), framework="pt") as f:  # checks the file's layout; reads no weights
            meta = json.loads((f.metadata() or {})["pipeline"])
            model_args = meta["model_args"]
    except (SafetensorError, json.JSONDecodeError, OSError, KeyError, TypeError) as exc:
        raise IntegrityError(stage, f"{rec.path} is not a readable safetensors checkpoint: {exc}", unreadable) from None
    model = spec.build(model_args)
    try:
        _fill(model, path, meta.get("aliases", {}), f"{rec.path} does not fit the model {spec.name} builds")
    except (json.JSONDecodeError, OSError, KeyError) as exc:
        raise IntegrityError(stage, f"{rec.path} is not a readable safetensors checkpoint: {exc}", unreadable) from None
    except ValueError as exc:
        raise IntegrityError(
            stage, str(exc), f"retrain after changing the model: python -m pipeline train --model {manifest.command} --force"
        ) from None
    return with_spec_outputs(model, spec).eval(), rec.sha256
