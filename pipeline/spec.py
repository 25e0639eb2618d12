"""A model's contract, declared once: names, shapes, dtypes, dynamic axes, tolerance.

Every stage reads the same `ModelSpec`: train builds and fits the model, trace and
export use its example inputs and dynamic axes, parity its sample inputs and
tolerance, package writes its I/O contract into the archive for the handler.
A model module defines `SPEC = ModelSpec(...)`.
"""

from __future__ import annotations

import dataclasses
import importlib
import importlib.util
import hashlib
import inspect
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping

import numpy as np

from .errors import SpecError

# A tensor dimension is either a fixed size or the name of a dynamic axis.
Dim = int | str


@dataclass(frozen=True)
class TensorSpec:
    """One named input or output; str dimensions are dynamic axes (e.g. "batch")."""

    name: str
    dtype: str
    shape: tuple[Dim, ...]

    def dynamic_axes(self) -> dict[int, str]:
        return {i: d for i, d in enumerate(self.shape) if isinstance(d, str)}

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "dtype": self.dtype, "shape": list(self.shape)}


@dataclass(frozen=True)
class Tolerance:
    """Element-wise pass rule: |got - want| <= atol + rtol * |want|."""

    atol: float = 1e-5
    rtol: float = 1e-4


@dataclass(frozen=True)
class TrainResult:
    """What a model's `train` returns: fitted weights, the args that rebuild it, metrics."""

    state_dict: Mapping[str, Any]
    model_args: Mapping[str, Any]
    metrics: Mapping[str, float]


@dataclass(frozen=True)
class ModelSpec:
    """Everything the pipeline needs to know about one model."""

    name: str
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    build: Callable[[Mapping[str, Any]], Any]
    train: Callable[[int], TrainResult]
    sample_inputs: Callable[[int, np.random.Generator], dict[str, np.ndarray]]
    edge_inputs: Callable[[], dict[str, np.ndarray]] | None = None
    tolerance: Tolerance = Tolerance()
    # Largest number of rows one HTTP request may carry (the handler enforces it).
    max_rows_per_request: int = 4096
    # A request body users can paste to try the endpoint.
    example_request: Mapping[str, Any] | None = None
    source: Path | None = field(default=None, compare=False)

    def contract(self) -> dict[str, Any]:
        """The I/O contract the handler reads from inside the archive."""
        return {
            "model": self.name,
            "inputs": [t.to_json() for t in self.inputs],
            "outputs": [t.to_json() for t in self.outputs],
            "max_rows_per_request": self.max_rows_per_request,
        }

    def source_sha256(self) -> str:
        """Hash of the file that defines the model: changing the model retrains it."""
        if self.source is None or not self.source.exists():
            return ""
        return hashlib.sha256(self.source.read_bytes()).hexdigest()


def _validate(spec: Any, where: str) -> ModelSpec:
    fix = f"define `SPEC = ModelSpec(name=..., inputs=..., outputs=..., build=..., train=..., sample_inputs=...)` in {where}"
    if not isinstance(spec, ModelSpec):
        raise SpecError("model", f"{where}: SPEC is a {type(spec).__name__}, not a pipeline.spec.ModelSpec", fix)
    if not spec.name or not spec.name.replace("_", "").replace("-", "").isalnum():
        raise SpecError("model", f"{where}: name {spec.name!r} must be letters, digits, '_' or '-'", "use a name like 'my_model'")
    if not spec.inputs or not spec.outputs:
        raise SpecError("model", f"{where}: a model needs at least one input and one output", fix)
    names = [t.name for t in (*spec.inputs, *spec.outputs)]
    if len(set(names)) != len(names):
        raise SpecError("model", f"{where}: input and output names must be unique, got {names}", "rename the duplicates")
    for t in (*spec.inputs, *spec.outputs):
        if not isinstance(t, TensorSpec):
            raise SpecError("model", f"{where}: {t!r} is not a TensorSpec", "declare inputs and outputs as TensorSpec(name, dtype, shape)")
        try:
            np.dtype(t.dtype)
        except TypeError:
            raise SpecError("model", f"{where}: {t.name} has unknown dtype {t.dtype!r}", "use a numpy dtype name such as 'float32' or 'int64'") from None
        if not t.shape or t.shape[0] != "batch":
            raise SpecError("model", f"{where}: {t.name} shape {t.shape} must start with the dynamic 'batch' axis", "write its shape as ('batch', ...)")
    for attr in ("build", "train", "sample_inputs"):
        if not callable(getattr(spec, attr)):
            raise SpecError("model", f"{where}: {attr} is not callable", fix)
    return spec


def load_spec(model: str) -> ModelSpec:
    """Load a model's spec by built-in name (`simple_nn`) or by path to a .py file."""
    if model.endswith(".py") or "/" in model:
        path = Path(model).resolve()
        if not path.is_file():
            raise SpecError("model", f"model file {model} does not exist", "pass the path of a .py file that defines SPEC, or a built-in name such as simple_nn")
        module_spec = importlib.util.spec_from_file_location(f"user_model_{path.stem}", path)
        module = importlib.util.module_from_spec(module_spec)
        module_spec.loader.exec_module(module)
        where = str(path)
    else:
        try:
            module = importlib.import_module(f"pipeline.models.{model}")
        except ModuleNotFoundError:
            known = ", ".join(sorted(p.stem for p in Path(__file__).with_name("models").glob("[!_]*.py")))
            raise SpecError("model", f"no built-in model named {model!r}", f"use one of: {known}; or pass a path to your own .py file") from None
        where = module.__file__
    if not hasattr(module, "SPEC"):
        raise SpecError("model", f"{where} does not define SPEC", "add `SPEC = ModelSpec(...)` at the bottom of the file")
    spec = _validate(module.SPEC, where)
    if spec.source is None:
        spec = dataclasses.replace(spec, source=Path(inspect.getfile(module)))
    return spec
