"""Stage 2: trace the eager model to TorchScript (`model.ts`) and check it loads back."""

from __future__ import annotations

import time
import warnings

import numpy as np
import torch

from . import checkpoint, files
from .errors import PipelineError
from .manifest import Manifest
from .stage import Settings, StageResult, resolve

STAGE = "trace"


def example_args(spec, batch: int, seed: int) -> tuple[torch.Tensor, ...]:
    feed = spec.sample_inputs(batch, np.random.default_rng(seed))
    return tuple(torch.from_numpy(np.ascontiguousarray(feed[t.name])) for t in spec.inputs)


def run(settings: Settings) -> StageResult:
    spec, layout = resolve(settings)
    manifest = Manifest(layout.root, spec.name)
    model, ckpt_sha = checkpoint.load_model(manifest, spec, STAGE)
    inputs = {"checkpoint": ckpt_sha}
    stage_settings = {"seed": settings.seed, "torch": torch.__version__}
    fresh, why = manifest.is_fresh("torchscript", inputs, stage_settings)
    if fresh and not settings.force:
        return StageResult(STAGE, True, (layout.torchscript,), 0.0, f"up to date ({why})")

    start = time.perf_counter()
    example = example_args(spec, 4, settings.seed)
    # Trace checks re-run the trace on other batch sizes and values: a model whose
    # control flow depends on the input's values fails here instead of shipping.
    checks = [example_args(spec, b, settings.seed + 1 + i) for i, b in enumerate((1, 7))]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            traced = torch.jit.trace(model, example, check_inputs=checks, check_tolerance=1e-5)
        except Exception as exc:  # the tracer raises many types; all mean "cannot trace"
            raise PipelineError(
                STAGE,
                f"torch.jit.trace could not trace {spec.name}: {type(exc).__name__}: {str(exc).strip()[:800]}",
                "make forward() free of Python control flow that depends on tensor values, "
                "or drop TorchScript and serve the ONNX model",
            ) from None
    messages = sorted({f"{w.category.__name__}: {w.message}" for w in caught})
    with files.atomic_path(layout.torchscript) as tmp:
        torch.jit.save(traced, str(tmp))

    # Load back what was written and run it once: a file that cannot be loaded fails here.
    reloaded = torch.jit.load(str(layout.torchscript))
    with torch.inference_mode():
        want = model(*example)
        got = reloaded(*example)
    if not torch.allclose(torch.as_tensor(want), torch.as_tensor(got), atol=1e-5, rtol=1e-4):
        raise PipelineError(STAGE, f"{layout.torchscript.name} loaded back gives different outputs from eager",
                            "report this with the model; parity will show the size of the difference")
    seconds = time.perf_counter() - start
    details = {
        "deprecated": "torch.jit.trace is deprecated since torch 2.11 in favour of torch.export; kept because users still deploy TorchScript",
        "warnings": messages,
        "trace_checked_batch_sizes": [4, 1, 7],
    }
    manifest.record("torchscript", layout.torchscript, STAGE, inputs, stage_settings, seconds, details)
    return StageResult(STAGE, False, (layout.torchscript,), seconds, f"traced, {len(messages)} warning(s) recorded in the manifest", details)
