"""Stage 2: trace the eager model to TorchScript (`model.ts`) and check it loads back."""

from __future__ import annotations

import contextlib
import io
import logging
import sys
import time
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch

from pipeline.artifacts import checkpoint, files
from pipeline.artifacts.manifest import Manifest
from pipeline.artifacts.names import TORCHSCRIPT
from pipeline.errors import PipelineError
from pipeline.settings import Layout, Settings, StageResult, resolve
from pipeline.spec import ModelSpec, Tolerance
from pipeline.stages.capture import StageLog, capture_mode, check_args, example_args, module_weight_bytes, run_once
from pipeline.stages.fresh import not_made_note, record_not_made, up_to_date

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


class NotTraceable(PipelineError):
    """torch.jit.trace cannot make a TorchScript module that answers as eager does; the chain may go on without it."""


def owner(place: str) -> str | None:
    """The installed library a `file:line` lies in (its top-level package), or None for the user's own code."""
    path = Path(place.rsplit(":", 1)[0]).resolve()
    if path.is_relative_to(TORCH_DIR):
        return "torch"
    parts = path.parts
    for marker in ("site-packages", "dist-packages"):
        if marker in parts[:-1]:
            return parts[parts.index(marker) + 1].removesuffix(".py")
    return None


def library_classes(model: torch.nn.Module, library: str) -> list[str]:
    """The outermost modules of `model` whose class comes from `library` (LlamaForCausalLM), by name."""
    found: list[str] = []
    skip: set[str] = set()
    for name, module in model.named_modules():
        if any(name.startswith(f"{s}.") for s in skip):
            continue
        if type(module).__module__.split(".")[0] == library:
            found.append(type(module).__name__)
            skip.add(name)
    return sorted(set(found))


def _refuse_value_branches(spec, branches: Branches) -> None:
    """Fail on a branch on a tensor's value in the user's code; the tracer only warns about it.

    The trace checks catch such a branch only when a check input takes the other side;
    the branch exists, so refuse rather than ship a coin toss. A branch on a shape
    (`if x.shape[1] > 1:`, in the model, a library or torch) is the same for every input
    of that shape: it is recorded, and the trace checks (other batch sizes, other lengths
    of every dynamic axis, the parity cases) stay the guard. A value branch inside an
    installed library is not the user's to fix: TorchScript is not made (`NotTraceable`).
    """
    own = [p for p in branches.values() if owner(p) is None]
    if own:
        raise PipelineError(
            STAGE,
            f"{spec.name}: forward() branches on a tensor's value at {', '.join(own)}; torch.jit.trace "
            "records only the branch the example took, so other inputs would silently get wrong answers",
            "compute both sides and pick with torch.where (or torch.cond), so the graph is the same for every input; "
            "a branch on a shape (if x.shape[1] > 1:) is allowed",
        )


def untraceable_fix(model: torch.nn.Module, places: list[str]) -> str:
    """What the user can do: change their own code where a site is theirs; never edit an installed library."""
    own = [p for p in places if owner(p) is None]
    libraries = sorted({lib for p in places if (lib := owner(p)) is not None})
    go_on = (
        "the chain goes on without TorchScript (the archive serves the ONNX graph, which parity holds to eager); "
        "--require-torchscript makes it stop here instead"
    )
    if own:
        return (
            f"in your code at {', '.join(own)}: compute both sides and pick with torch.where (or torch.cond), so the traced graph "
            f"is the same at every input size; otherwise {go_on}"
        )
    if not libraries:
        return f"TorchScript is optional: {go_on}"
    where = "; ".join(f"{lib} ({', '.join(library_classes(model, lib)) or 'its code'})" for lib in libraries)
    versions = ", ".join(f"{lib} {_version(lib)}" for lib in libraries)
    return (
        f"the branches are inside {where}, not in your code: {go_on}. For TorchScript as well, try another release of "
        f"the library (installed: {versions}); for a checkpoint folder, another task (--task / TASK=) builds another class"
    )


def _version(library: str) -> str:
    from importlib import metadata

    try:
        return metadata.version(library)
    except metadata.PackageNotFoundError:
        return "unknown"


def _close(want: torch.Tensor, got: torch.Tensor, tol: Tolerance) -> bool:
    """|got - want| <= atol + rtol·|want| + scaled·max|want|, the parity rule, on one output."""
    if want.shape != got.shape:
        return False
    w, g = want.double(), got.double()
    scale = float(w.abs().max()) if w.numel() else 0.0
    return bool(((w - g).abs() <= tol.atol + tol.rtol * w.abs() + tol.scaled * scale).all())


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
    """What torch.jit.trace gave: the module, where forward() branched, the warnings it raised, and how it was checked."""

    module: torch.jit.ScriptModule
    branches: Branches
    warnings: list[str]
    # "graphs": every check input traced to the same graph. "outputs": the graphs differ at other
    # sizes only by shape branches, and the traced module answers every check input as eager does.
    checked_by: str = "graphs"


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
    spec: ModelSpec,
    model: torch.nn.Module,
    example: tuple[torch.Tensor, ...],
    checks: list[tuple[torch.Tensor, ...]],
    log: StageLog,
) -> Traced:
    """torch.jit.trace with the trace checks.

    A branch on a tensor's value in the user's code is a PipelineError. Where the checks'
    graphs differ only because code branches on a shape (transformers' attention and mask
    code takes other paths at batch 1 or length 1), the module traced at the example's size
    is kept if it answers every check input as eager does; otherwise, or where the tracer
    fails, `NotTraceable`. The tracer's full text goes to `log`, not the terminal.
    """
    with (
        warnings.catch_warnings(record=True) as caught,
        library_log("transformers") as logged,
        capture_mode(),
        watch_branches() as branches,
    ):
        warnings.simplefilter("always")
        checked_by = "graphs"
        try:
            traced = torch.jit.trace(model, example, check_inputs=checks, check_tolerance=1e-5)
        except Exception as exc:  # the tracer raises many types; all mean "not as checked"
            if refused(exc):
                raise _refusal(exc) from None
            _refuse_value_branches(spec, branches)
            log.write(f"torch.jit.trace of {spec.name}\n\n{type(exc).__name__}: {exc}\n")
            graphs_differ = "Graphs differed across invocations" in str(exc)
            if not (graphs_differ and branches.shapes() and not branches.values()):
                raise _not_traceable(spec, model, exc, branches, log) from None
            traced = torch.jit.trace(model, example, check_trace=False)
            checked_by = "outputs"
            mismatch = _first_mismatch(spec, model, traced, checks)
            if mismatch is not None:
                raise _not_traceable(spec, model, exc, branches, log, mismatch) from None
    _refuse_value_branches(spec, branches)
    found = sorted({f"{w.category.__name__}: {w.message}" for w in caught} | set(logged))
    return Traced(traced, branches, found, checked_by)


def _first_mismatch(spec: ModelSpec, model: torch.nn.Module, traced, checks: list[tuple[torch.Tensor, ...]]) -> str | None:
    """The first check input (named by its shapes) where the traced module's answer differs from eager's, or None."""
    with torch.inference_mode():
        for args in checks:
            want, got = model(*args), traced(*args)
            want = want if isinstance(want, (tuple, list)) else (want,)
            got = got if isinstance(got, (tuple, list)) else (got,)
            if len(want) != len(got) or not all(_close(w, g, spec.tolerance) for w, g in zip(want, got)):
                return ", ".join(f"{t.name} {list(a.shape)}" for t, a in zip(spec.inputs, args))
    return None


def _not_traceable(
    spec: ModelSpec, model: torch.nn.Module, exc: Exception, branches: Branches, log: StageLog, mismatch: str | None = None
) -> NotTraceable:
    first = next((line.strip() for line in str(exc).splitlines() if line.strip()), "")
    places = branches.shapes() + branches.values()
    where = f"; it branches on a shape at {', '.join(places)}" if places else ""
    why = f"{type(exc).__name__}: {first}"[:300]
    if mismatch is not None:
        why = f"the graph differs at other input sizes, and the module traced at the example's size answers {mismatch} unlike eager"
    return NotTraceable(
        STAGE,
        f"torch.jit.trace could not make TorchScript of {spec.name}: {why}{where} (the tracer's full text: {log.shown})",
        untraceable_fix(model, places),
    )


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
        "checked_by": traced.checked_by,
        "deprecated": "torch.jit.trace is deprecated since torch 2.11 in favour of torch.export; kept because users still deploy TorchScript",
        "warnings": traced.warnings,
        # Branches on a shape, anywhere, let through; the trace checks at other sizes guard them.
        "shape_branches": shapes,
        # The same, inside torch only (its own shape assertions), under the key readers already know.
        "torch_internal_value_checks": [p for p in shapes if owner(p) == "torch"],
        "trace_checked_batch_sizes": [4, 1, 7],
        "trace_checks": checks + 1,
    }


def _skip_not_made(manifest: Manifest, layout: Layout, failure: NotTraceable, inputs: dict, stage_settings: dict, seconds: float):
    return record_not_made(
        manifest,
        TORCHSCRIPT,
        layout.torchscript,
        failure,
        inputs,
        stage_settings,
        seconds,
        "TorchScript not made, the chain goes on with ONNX",
    )


def refused(exc: BaseException) -> bool:
    """Whether torch refused torch.jit.trace itself (its deprecation made an error, as torch 2.14 may), not this model."""
    text = str(exc)
    return "torch.jit" in text and "deprecated" in text


def _refusal(exc: BaseException) -> NotTraceable:
    first = next((line.strip() for line in str(exc).splitlines() if line.strip()), "")
    return NotTraceable(
        STAGE,
        f"torch {torch.__version__} refuses torch.jit.trace ({type(exc).__name__}: {first[:200]})",
        "nothing to do: TorchScript is deprecated in favour of torch.export, and the chain goes on with model.onnx and model.pt2; "
        "--no-torchscript (EXPORT_ARGS=--no-torchscript) skips this stage on purpose",
    )


def run(settings: Settings) -> StageResult:
    """Trace the verified checkpoint to model.ts, with the trace checks, and check that it loads back.

    Where TorchScript cannot be made, the stage records why in the manifest (a note in
    place of model.ts) and the chain goes on with ONNX, unless `require_torchscript`.
    """
    spec, layout = resolve(settings)
    manifest = Manifest(layout.root, spec.name, settings.model)
    model, ckpt_sha = checkpoint.load_model(manifest, spec, STAGE)
    inputs = {"checkpoint": ckpt_sha}
    # The model file also holds the check inputs: editing them re-traces even when the
    # (deterministic) retraining gives the same checkpoint bytes.
    stage_settings = {
        "seed": settings.seed,
        "torch": torch.__version__,
        "model_source_sha256": spec.source_sha256(),
        "torchscript": settings.torchscript,
    }
    outputs = (layout.torchscript,)
    if skipped := up_to_date(manifest, TORCHSCRIPT, inputs, stage_settings, settings, STAGE, outputs):
        if not skipped.details.get("not_made"):
            return skipped
        if settings.require_torchscript:
            raise NotTraceable(STAGE, skipped.details["not_made"], skipped.details["what_to_do"])
        return replace(skipped, summary=f"TorchScript not made (up to date): {skipped.details['not_made']}")

    start = time.perf_counter()
    if not settings.torchscript:
        failure = NotTraceable(STAGE, "not asked for (--no-torchscript)", "drop --no-torchscript to make TorchScript as well")
        return _skip_not_made(manifest, layout, failure, inputs, stage_settings, 0.0)
    if spec.generation is not None:
        # What torch.jit.trace would bake in: one cache length's shape branches, and a trace per layout.
        failure = NotTraceable(
            STAGE,
            f"{spec.name} is a text-generation model: it is served from its ONNX graph with the key/value cache, "
            "which parity holds to eager token for token; TorchScript is not made for it",
            "nothing to do; for one logits pass without the cache, TorchScript included, use --task causal-lm (TASK=causal-lm)",
        )
        if settings.require_torchscript:
            raise failure
        return _skip_not_made(manifest, layout, failure, inputs, stage_settings, time.perf_counter() - start)
    example = example_args(spec, 4, settings.seed, STAGE)
    run_once(model, example)
    # Trace checks re-run the trace on other batch sizes and values: a model whose
    # control flow depends on the input's values fails here instead of shipping.
    checks = check_args(spec, settings.seed, STAGE)
    try:
        traced = trace_model(spec, model, example, checks, StageLog.of(layout, STAGE))
    except NotTraceable as failure:
        if settings.require_torchscript:
            raise
        return _skip_not_made(manifest, layout, failure, inputs, stage_settings, time.perf_counter() - start)
    save_torchscript(traced.module, layout.torchscript, module_weight_bytes(model))
    check_loads_back(model, example, layout.torchscript)
    not_made_note(layout.torchscript).unlink(missing_ok=True)
    seconds = time.perf_counter() - start
    details = _details(traced, len(checks))
    manifest.record(TORCHSCRIPT, layout.torchscript, STAGE, inputs, stage_settings, seconds, details)
    how = "" if traced.checked_by == "graphs" else "; graphs differ at other sizes by shape branches, answers checked against eager"
    return StageResult(STAGE, False, outputs, seconds, f"traced, {len(traced.warnings)} warning(s) recorded in the manifest{how}", details)
