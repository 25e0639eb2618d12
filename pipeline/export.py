"""Stage 3: export to ONNX with the torch.export-based exporter, dynamic batch axis."""

from __future__ import annotations

import contextlib
import logging
import time
import warnings

import onnx
import torch

from . import checkpoint, files
from .errors import PipelineError
from .manifest import Manifest
from .spec import ModelSpec
from .stage import Settings, StageResult, resolve
from .trace import example_args

STAGE = "export"
OPSET = 20


def dynamic_shapes(spec: ModelSpec) -> dict[str, dict[int, torch.export.Dim]]:
    """One `Dim` per axis name, shared by every input that uses the name."""
    dims: dict[str, torch.export.Dim] = {}
    shapes = {}
    for t in spec.inputs:
        shapes[t.name] = {i: dims.setdefault(name, torch.export.Dim(name, min=1)) for i, name in t.dynamic_axes().items()}
    return shapes


def symbolic_dims(model: onnx.ModelProto) -> dict[str, list[str | int]]:
    """Each graph input's and output's dimensions: a name where symbolic, a size where fixed."""
    out = {}
    for value in (*model.graph.input, *model.graph.output):
        dims = value.type.tensor_type.shape.dim
        out[value.name] = [d.dim_param if d.HasField("dim_param") else d.dim_value for d in dims]
    return out


@contextlib.contextmanager
def _quiet_exporter():
    """The exporter logs notes (e.g. torchvision not installed) that are not ours to act on."""
    loggers = [logging.getLogger(n) for n in ("torch.onnx", "torch.export", "torch._export", "onnxscript")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            yield
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)


def check_graph(path, spec: ModelSpec) -> dict:
    """onnx.checker plus our contract: names as declared, dynamic axes symbolic in the file."""
    onnx.checker.check_model(str(path), full_check=True)
    model = onnx.load(str(path), load_external_data=False)
    dims = symbolic_dims(model)
    problems = []
    for t in (*spec.inputs, *spec.outputs):
        if t.name not in dims:
            problems.append(f"{t.name} is not a graph input/output (graph has {sorted(dims)})")
            continue
        got = dims[t.name]
        if len(got) != len(t.shape):
            problems.append(f"{t.name} has rank {len(got)}, declared {len(t.shape)}")
            continue
        for axis, name in t.dynamic_axes().items():
            if not isinstance(got[axis], str) or not got[axis]:
                problems.append(f"{t.name} axis {axis} ({name}) is fixed to {got[axis]} in the graph, not symbolic")
    if problems:
        raise PipelineError(STAGE, f"{spec.name}: exported graph breaks the declared contract: " + "; ".join(problems),
                            "check the spec's inputs/outputs and that forward() does not specialise dynamic axes")
    return {
        "opset": {op.domain or "ai.onnx": op.version for op in model.opset_import},
        "ir_version": model.ir_version,
        "producer": f"{model.producer_name} {model.producer_version}",
        "dims": dims,
    }


def run(settings: Settings) -> StageResult:
    spec, layout = resolve(settings)
    manifest = Manifest(layout.root, spec.name)
    model, ckpt_sha = checkpoint.load_model(manifest, spec, STAGE)
    inputs = {"checkpoint": ckpt_sha}
    stage_settings = {"opset": OPSET, "dynamo": True, "seed": settings.seed, "torch": torch.__version__}
    fresh, why = manifest.is_fresh("onnx", inputs, stage_settings)
    if fresh and not settings.force:
        return StageResult(STAGE, True, (layout.onnx,), 0.0, f"up to date ({why})")

    start = time.perf_counter()
    # Batch 4, not 1: torch.export specialises axes whose example size is 0 or 1.
    example = example_args(spec, 4, settings.seed)
    try:
        with _quiet_exporter():
            program = torch.onnx.export(
                model,
                example,
                input_names=[t.name for t in spec.inputs],
                output_names=[t.name for t in spec.outputs],
                opset_version=OPSET,
                dynamo=True,
                dynamic_shapes=tuple(dynamic_shapes(spec)[t.name] for t in spec.inputs),
                verbose=False,
                report=False,
            )
    except Exception as exc:  # the exporter raises many types; all mean "cannot export"
        reason = str(exc).strip().splitlines()
        raise PipelineError(
            STAGE,
            f"torch.onnx.export could not export {spec.name}: {type(exc).__name__}: " + " ".join(reason[:6])[:1200],
            "data-dependent control flow needs torch.cond, unsupported ops need a custom "
            "translation; earlier artifacts are unchanged. Re-run with --force after fixing the model",
        ) from None
    with files.atomic_path(layout.onnx) as tmp:
        program.save(str(tmp), external_data=False)
        try:
            graph = check_graph(tmp, spec)
        except onnx.checker.ValidationError as exc:
            raise PipelineError(STAGE, f"exported ONNX graph fails onnx.checker: {exc}", "report this with the model") from None
    seconds = time.perf_counter() - start
    manifest.record("onnx", layout.onnx, STAGE, inputs, stage_settings, seconds, graph)
    batch = graph["dims"][spec.inputs[0].name][0]
    return StageResult(STAGE, False, (layout.onnx,), seconds,
                       f"opset {graph['opset'].get('ai.onnx')}, IR {graph['ir_version']}, batch axis symbolic ({batch!r})", graph)
