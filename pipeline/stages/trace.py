"""Stage 2: trace the eager model to TorchScript (`model.ts`) and check it loads back."""

from __future__ import annotations

import io
import time
import warnings
from pathlib import Path

import torch

from pipeline.artifacts import checkpoint, files
from pipeline.artifacts.manifest import Manifest
from pipeline.artifacts.names import TORCHSCRIPT
from pipeline.errors import PipelineError
from pipeline.settings import Settings, StageResult, resolve
from pipeline.stages.capture import capture_mode, check_args, example_args

STAGE = "trace"
# The tracer's warning for `if tensor:` / `bool(tensor)` in forward(): the branch taken
# for the example is baked into the trace and silently wrong for other inputs.
VALUE_DEPENDENT = "Converting a tensor to a Python boolean"


TORCH_DIR = Path(torch.__file__).resolve().parent


def value_checks(caught: list[warnings.WarningMessage]) -> tuple[list[str], list[str]]:
    """The places a tensor became a Python bool: (in the user's code, inside torch).

    Inside torch these are shape assertions (`if embed_dim != embed_dim_to_check: raise`)
    that can only raise, never choose a branch; anywhere else (the model's own file, or
    any library outside torch) it is the user's `if tensor:`.
    """
    user: set[str] = set()
    internal: set[str] = set()
    for w in caught:
        if VALUE_DEPENDENT in str(w.message):
            inside = Path(w.filename).resolve().is_relative_to(TORCH_DIR)
            (internal if inside else user).add(f"{w.filename}:{w.lineno}")
    return sorted(user), sorted(internal)


def _refuse_value_branches(spec, caught: list[warnings.WarningMessage]) -> None:
    """Fail on `if tensor:` in the model's code, which the tracer only warns about.

    The trace checks catch such a branch only when a check input takes the other side;
    the warning says the branch exists, so refuse rather than ship a coin toss. The
    same warning from torch's own shape assertions is recorded, not refused: the trace
    checks (other batch sizes, other lengths of every dynamic axis, the parity cases)
    stay the guard there.
    """
    branches, _ = value_checks(caught)
    if branches:
        raise PipelineError(
            STAGE,
            f"{spec.name}: forward() branches on a tensor's value at {', '.join(branches)}; torch.jit.trace "
            "records only the branch the example took, so other inputs would silently get wrong answers",
            "compute both sides and pick with torch.where (or torch.cond), so the graph is the same for every input",
        )


def _same(want, got) -> bool:
    want = want if isinstance(want, (tuple, list)) else (want,)
    got = got if isinstance(got, (tuple, list)) else (got,)
    return len(want) == len(got) and all(
        w.shape == g.shape and torch.allclose(w.double(), g.double(), atol=1e-5, rtol=1e-4) for w, g in zip(want, got)
    )


def run(settings: Settings) -> StageResult:
    spec, layout = resolve(settings)
    manifest = Manifest(layout.root, spec.name)
    model, ckpt_sha = checkpoint.load_model(manifest, spec, STAGE)
    inputs = {"checkpoint": ckpt_sha}
    # The model file also holds the check inputs: editing them re-traces even when the
    # (deterministic) retraining gives the same checkpoint bytes.
    stage_settings = {"seed": settings.seed, "torch": torch.__version__, "model_source_sha256": spec.source_sha256()}
    fresh, why = manifest.is_fresh(TORCHSCRIPT, inputs, stage_settings)
    if fresh and not settings.force:
        return StageResult(STAGE, True, (layout.torchscript,), 0.0, f"up to date ({why})")

    start = time.perf_counter()
    example = example_args(spec, 4, settings.seed, STAGE)
    # Trace checks re-run the trace on other batch sizes and values: a model whose
    # control flow depends on the input's values fails here instead of shipping.
    checks = check_args(spec, settings.seed, STAGE)
    with warnings.catch_warnings(record=True) as caught, capture_mode():
        warnings.simplefilter("always")
        try:
            traced = torch.jit.trace(model, example, check_inputs=checks, check_tolerance=1e-5)
        except Exception as exc:  # the tracer raises many types; all mean "cannot trace"
            _refuse_value_branches(spec, caught)
            raise PipelineError(
                STAGE,
                f"torch.jit.trace could not trace {spec.name}: {type(exc).__name__}: {str(exc).strip()[:800]}",
                "make forward() free of Python control flow that depends on tensor values, or drop TorchScript and serve the ONNX model",
            ) from None
    _refuse_value_branches(spec, caught)
    messages = sorted({f"{w.category.__name__}: {w.message}" for w in caught})
    # Serialise in memory, then write atomically: torch.jit.save writing to a file
    # aborts the whole process (SIGABRT) when the disk fills, instead of raising.
    buffer = io.BytesIO()
    torch.jit.save(traced, buffer)
    files.write_bytes(layout.torchscript, buffer.getvalue())

    # Load back what was written and run it once: a file that cannot be loaded fails here.
    reloaded = torch.jit.load(str(layout.torchscript))
    with torch.inference_mode(), capture_mode():
        want = model(*example)
        got = reloaded(*example)
    if not _same(want, got):
        raise PipelineError(
            STAGE,
            f"{layout.torchscript.name} loaded back gives different outputs from eager",
            "report this with the model; parity will show the size of the difference",
        )
    seconds = time.perf_counter() - start
    details = {
        "deprecated": "torch.jit.trace is deprecated since torch 2.11 in favour of torch.export; kept because users still deploy TorchScript",
        "warnings": messages,
        # torch's own shape assertions that met a traced tensor: harmless, listed for the record.
        "torch_internal_value_checks": value_checks(caught)[1],
        "trace_checked_batch_sizes": [4, 1, 7],
        "trace_checks": len(checks) + 1,
    }
    manifest.record(TORCHSCRIPT, layout.torchscript, STAGE, inputs, stage_settings, seconds, details)
    return StageResult(
        STAGE, False, (layout.torchscript,), seconds, f"traced, {len(messages)} warning(s) recorded in the manifest", details
    )
