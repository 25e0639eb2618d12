"""Stage 2: trace the eager model to TorchScript (`model.ts`) and check it loads back."""

from __future__ import annotations

import contextlib
import io
import logging
import sys
import time
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import torch

from pipeline.artifacts import checkpoint, files
from pipeline.artifacts.manifest import Manifest
from pipeline.artifacts.names import TORCHSCRIPT
from pipeline.errors import PipelineError
from pipeline.settings import Settings, StageResult, resolve
from pipeline.spec import ModelSpec
from pipeline.stages.capture import capture_mode, check_args, example_args, module_weight_bytes
from pipeline.stages.fresh import up_to_date

STAGE = "trace"
TORCH_DIR = Path(torch.__file__).resolve().parent
# Nodes a traced tensor's value may come from and still be the same for every input of
# the same shape: while tracing, `x.shape[i]` is a tensor computed by aten::size.
SHAPE_SOURCES = frozenset({"aten::size", "aten::sym_size", "aten::dim", "prim::Constant"})


@dataclass
class Branches:
    """The places (file:line) where a traced tensor became a Python bool, by where the bool came from."""

    on_values: set[str] = field(default_factory=set)
    on_shapes: set[str] = field(default_factory=set)

    def values(self) -> list[str]:
        return sorted(self.on_values)

    def shapes(self) -> list[str]:
        # A line that branched on a value even once is a value branch.
        return sorted(self.on_shapes - self.on_values)


def _from_shapes(tensor: torch.Tensor) -> bool:
    """Whether a traced tensor is computed from sizes and constants only: no input's data, no parameter, no random op."""
    try:
        start = torch._C._get_value_trace(tensor)  # type: ignore[attr-defined]  # bound, but not in torch's stubs
    except RuntimeError:  # a tensor the tracer cannot place (an untraced one that needs grad): assume a value
        return False
    todo, seen = [start], {start.unique()}
    while todo:
        node = todo.pop().node()
        if node.kind() in SHAPE_SOURCES:
            continue
        inputs = list(node.inputs())
        # A source other than a constant is data: prim::Param (the model's arguments),
        # prim::TracedAttr (a parameter or buffer); so is a random op's output.
        if not inputs or node.isNondeterministic():
            return False
        for value in inputs:
            if value.unique() not in seen:
                seen.add(value.unique())
                todo.append(value)
    return True


@contextlib.contextmanager
def watch_branches() -> Iterator[Branches]:
    """Record where a traced tensor becomes a Python bool, and whether it came from shapes only.

    The tracer only warns ("Converting a tensor to a Python boolean") and the warning does
    not say of what, so `Tensor.__bool__` is wrapped for the duration: the tracer knows the
    graph node of every traced tensor (`torch._C._get_value_trace`), and walking back from
    it shows whether an input's data or a parameter feeds the bool. Restored on exit.
    """
    branches = Branches()
    previous = torch.Tensor.__dict__.get("__bool__")  # None: inherited from torch._C.TensorBase
    inner = previous or torch._C.TensorBase.__bool__

    def watched(tensor: torch.Tensor) -> bool:
        if torch._C._get_tracing_state() is not None:
            caller = sys._getframe(1)  # the line with the `if`, in whichever file it is
            place = f"{caller.f_code.co_filename}:{caller.f_lineno}"
            (branches.on_shapes if _from_shapes(tensor) else branches.on_values).add(place)
        return inner(tensor)

    torch.Tensor.__bool__ = watched  # type: ignore[method-assign, assignment]
    try:
        yield branches
    finally:
        if previous is None:
            del torch.Tensor.__bool__
        else:
            torch.Tensor.__bool__ = previous  # type: ignore[method-assign]


def _refuse_value_branches(spec, branches: Branches) -> None:
    """Fail on a branch on a tensor's value, wherever it is written; the tracer only warns about it.

    The trace checks catch such a branch only when a check input takes the other side;
    the branch exists, so refuse rather than ship a coin toss. A branch on a shape
    (`if x.shape[1] > 1:`, in the model, a library or torch) is the same for every input
    of that shape: it is recorded, and the trace checks (other batch sizes, other lengths
    of every dynamic axis, the parity cases) stay the guard.
    """
    if branches.values():
        raise PipelineError(
            STAGE,
            f"{spec.name}: forward() branches on a tensor's value at {', '.join(branches.values())}; torch.jit.trace "
            "records only the branch the example took, so other inputs would silently get wrong answers",
            "compute both sides and pick with torch.where (or torch.cond), so the graph is the same for every input; "
            "a branch on a shape (if x.shape[1] > 1:) is allowed",
        )


def _untraceable_fix(branches: Branches) -> str:
    fix = "make forward() free of Python control flow that depends on tensor values, or drop TorchScript and serve the ONNX model"
    if not branches.shapes():
        return fix
    # A shape branch is let through, and then a check input of another size may take its other side.
    return (
        f"{fix}; it branches on a shape at {', '.join(branches.shapes())}, where a check input of another size "
        "(batch 1, another length) may take the other side: compute both sides and pick with torch.where"
    )


def _in_torch(place: str) -> bool:
    return Path(place.rsplit(":", 1)[0]).resolve().is_relative_to(TORCH_DIR)


def _same(want, got) -> bool:
    want = want if isinstance(want, (tuple, list)) else (want,)
    got = got if isinstance(got, (tuple, list)) else (got,)
    return len(want) == len(got) and all(
        w.shape == g.shape and torch.allclose(w.double(), g.double(), atol=1e-5, rtol=1e-4) for w, g in zip(want, got)
    )


# Up to this many bytes of weights the module is serialised in memory first.
IN_MEMORY_BYTES = 256 << 20


def save_torchscript(traced, path: Path, weights: int) -> None:
    """Write the traced module atomically.

    torch.jit.save aborts the whole process (SIGABRT) when the disk fills mid-write,
    instead of raising, so a small module is serialised in memory and then written. A
    large one goes to the file directly, after checking the room its weights need: in
    memory, the buffer took two more copies of a 2.4 GB model's weights while it grew.
    """
    if weights <= IN_MEMORY_BYTES:
        buffer = io.BytesIO()
        torch.jit.save(traced, buffer)
        files.write_bytes(path, buffer.getbuffer())
        return
    with files.atomic_path(path, at_least=weights + (64 << 20)) as tmp:
        torch.jit.save(traced, str(tmp))


@dataclass(frozen=True)
class Traced:
    """What torch.jit.trace gave: the module, where forward() branched, and the warnings it raised."""

    module: torch.jit.ScriptModule
    branches: Branches
    warnings: list[str]


@contextlib.contextmanager
def library_log(name: str) -> Iterator[list[str]]:
    """A library's logged warnings (transformers logs, it does not warn) kept for the manifest instead of printed.

    torch.jit.trace reads every attribute of the module, so a property such as a transformers
    model's `loss_function` logs about a loss that tracing never computes.
    """
    logger = logging.getLogger(name)
    kept: list[str] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            kept.append(f"{name}: {record.getMessage()}")

    handlers, propagate = logger.handlers[:], logger.propagate
    logger.handlers, logger.propagate = [Keep(logging.WARNING)], False
    try:
        yield kept
    finally:
        logger.handlers, logger.propagate = handlers, propagate


def trace_model(
    spec: ModelSpec, model: torch.nn.Module, example: tuple[torch.Tensor, ...], checks: list[tuple[torch.Tensor, ...]]
) -> Traced:
    """torch.jit.trace with the trace checks; a branch on a tensor's value, or a failed trace, is a PipelineError."""
    with (
        warnings.catch_warnings(record=True) as caught,
        library_log("transformers") as logged,
        capture_mode(),
        watch_branches() as branches,
    ):
        warnings.simplefilter("always")
        try:
            traced = torch.jit.trace(model, example, check_inputs=checks, check_tolerance=1e-5)
        except Exception as exc:  # the tracer raises many types; all mean "cannot trace"
            _refuse_value_branches(spec, branches)
            raise PipelineError(
                STAGE,
                f"torch.jit.trace could not trace {spec.name}: {type(exc).__name__}: {str(exc).strip()[:800]}",
                _untraceable_fix(branches),
            ) from None
    _refuse_value_branches(spec, branches)
    return Traced(traced, branches, sorted({f"{w.category.__name__}: {w.message}" for w in caught} | set(logged)))


def check_loads_back(model: torch.nn.Module, example: tuple[torch.Tensor, ...], path: Path) -> None:
    """Load back what was written and run it once: a file that cannot be loaded, or answers differently, fails here."""
    reloaded = torch.jit.load(str(path))
    with torch.inference_mode(), capture_mode():
        want = model(*example)
        got = reloaded(*example)
    if not _same(want, got):
        raise PipelineError(
            STAGE,
            f"{path.name} loaded back gives different outputs from eager",
            "report this with the model; parity will show the size of the difference",
        )


def _details(traced: Traced, checks: int) -> dict:
    shapes = traced.branches.shapes()
    return {
        "deprecated": "torch.jit.trace is deprecated since torch 2.11 in favour of torch.export; kept because users still deploy TorchScript",
        "warnings": traced.warnings,
        # Branches on a shape, anywhere, let through; the trace checks at other sizes guard them.
        "shape_branches": shapes,
        # The same, inside torch only (its own shape assertions), under the key readers already know.
        "torch_internal_value_checks": [p for p in shapes if _in_torch(p)],
        "trace_checked_batch_sizes": [4, 1, 7],
        "trace_checks": checks + 1,
    }


def run(settings: Settings) -> StageResult:
    """Trace the verified checkpoint to model.ts, with the trace checks, and check that it loads back."""
    spec, layout = resolve(settings)
    manifest = Manifest(layout.root, spec.name)
    model, ckpt_sha = checkpoint.load_model(manifest, spec, STAGE)
    inputs = {"checkpoint": ckpt_sha}
    # The model file also holds the check inputs: editing them re-traces even when the
    # (deterministic) retraining gives the same checkpoint bytes.
    stage_settings = {"seed": settings.seed, "torch": torch.__version__, "model_source_sha256": spec.source_sha256()}
    if skipped := up_to_date(manifest, TORCHSCRIPT, inputs, stage_settings, settings, STAGE, (layout.torchscript,)):
        return skipped

    start = time.perf_counter()
    example = example_args(spec, 4, settings.seed, STAGE)
    # Trace checks re-run the trace on other batch sizes and values: a model whose
    # control flow depends on the input's values fails here instead of shipping.
    checks = check_args(spec, settings.seed, STAGE)
    traced = trace_model(spec, model, example, checks)
    save_torchscript(traced.module, layout.torchscript, module_weight_bytes(model))
    check_loads_back(model, example, layout.torchscript)
    seconds = time.perf_counter() - start
    details = _details(traced, len(checks))
    manifest.record(TORCHSCRIPT, layout.torchscript, STAGE, inputs, stage_settings, seconds, details)
    return StageResult(
        STAGE, False, (layout.torchscript,), seconds, f"traced, {len(traced.warnings)} warning(s) recorded in the manifest", details
    )
