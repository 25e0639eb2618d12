"""Stage 3: export to ONNX with the torch.export-based exporter, dynamic batch axis.

Where that exporter fails, the TorchScript-based one (`dynamo=False`) is an explicit
fallback: only when the spec (`exporter_fallback=True`) or the run (`--exporter-fallback`)
asks for it, recorded in the manifest, and checked by the same parity gate.

Protobuf cannot write a message over 2 GiB, so a model whose weights pass
`EXTERNAL_DATA_THRESHOLD` keeps them in one external-data file beside the graph,
`model.onnx.data`; the pair is written in a private folder, checked there, and renamed
into place data first (`files.atomic_files`). Smaller models keep their weights
embedded, as before. The manifest's onnx record says which ("weights") and records the
data file's hash and size ("external_data"), verified with the graph on every read.
"""

from __future__ import annotations

import contextlib
import inspect
import logging
import re
import time
import traceback
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnx_ir
import torch

from pipeline.artifacts import checkpoint, files
from pipeline.artifacts.manifest import Manifest
from pipeline.artifacts.names import EXTERNAL_DATA, ONNX, data_file_name
from pipeline.errors import PipelineError
from pipeline.settings import Layout, Settings, StageResult, resolve
from pipeline.spec import ModelSpec
from pipeline.stages.capture import StageLog, capture_mode, example_args, module_weight_bytes, run_once
from pipeline.stages.fresh import up_to_date

STAGE = "export"
OPSET = 20
# Weights past this go to model.onnx.data: protobuf's limit is 2 GiB for the whole file,
# and the headroom is for the graph and the tensors small enough to stay inline.
EXTERNAL_DATA_THRESHOLD = (2 << 30) - (256 << 20)


def dynamic_shapes(spec: ModelSpec) -> dict[str, dict[int, torch.export.Dim]]:
    """One `Dim` per axis name, shared by every input that uses the name."""
    dims: dict[str, torch.export.Dim] = {}
    shapes = {}
    for t in spec.inputs:
        shapes[t.name] = {i: dims.setdefault(name, torch.export.Dim(name, min=1)) for i, name in t.dynamic_axes().items()}
    return shapes


def positional_shapes(model: torch.nn.Module, spec: ModelSpec) -> tuple[Any, ...]:
    """The dynamic shapes in the structure of forward's arguments: those a `*args` takes as one tuple."""
    shapes = [dynamic_shapes(spec)[t.name] for t in spec.inputs]
    params = list(inspect.signature(model.forward).parameters.values())
    star = next((i for i, p in enumerate(params) if p.kind is inspect.Parameter.VAR_POSITIONAL), None)
    return tuple(shapes) if star is None else (*shapes[:star], tuple(shapes[star:]))


def check_example(spec: ModelSpec, example: tuple[torch.Tensor, ...]) -> None:
    """torch.export fixes an axis whose example size is 0 or 1, and may merge axes of equal size."""
    sizes: dict[str, int] = {}
    for t, arr in zip(spec.inputs, example):
        for axis, name in t.dynamic_axes().items():
            sizes.setdefault(name, int(arr.shape[axis]))
    fix = "make sample_inputs give every dynamic axis a size of 2 or more, each axis a different size (e.g. seq 12 when batch is 4)"
    for name, size in sizes.items():
        if size < 2:
            raise PipelineError(
                STAGE,
                f"{spec.name}: the export example (sample_inputs(4, rng)) has size {size} on the "
                f"dynamic axis '{name}'; torch.export would fix the axis to that size",
                fix,
            )
    for name, size in sizes.items():
        same = [n for n, s in sizes.items() if s == size and n != name]
        if same:
            raise PipelineError(
                STAGE,
                f"{spec.name}: the export example has size {size} on both dynamic axes '{name}' "
                f"and '{same[0]}'; torch.export would treat them as one axis",
                fix,
            )


FALLBACK_HINT = (
    "; or let the TorchScript-based exporter take over, as it does by default (checked by the same parity gate): "
    "python -m pipeline all --model {model} without --no-exporter-fallback"
)


def data_dependent(exc: BaseException) -> bool:
    """Whether torch.export failed on control flow that depends on a tensor's value."""
    text = ""
    while exc is not None:
        text += f"{type(exc).__name__}: {exc}\n"
        exc = exc.__cause__  # type: ignore[assignment]
    return "data-dependent" in text or "GuardOnDataDependent" in text


def exporter_failure(spec: ModelSpec, exc: Exception, model_arg: str, log: StageLog, offer_fallback: bool = True) -> PipelineError:
    """The exporter's own reason (its innermost cause), where in forward() it arose, and a hint; its full text goes to `log`."""
    log.write(f"torch.onnx.export(dynamo=True) of {spec.name}\n\n{''.join(traceback.format_exception(exc))}")
    root: BaseException = exc
    while root.__cause__ is not None:
        root = root.__cause__
    full = f"{exc}\n{root}"
    lines = [ln.strip() for ln in str(root).strip().splitlines() if ln.strip()]
    reason = f"{type(root).__name__}: {lines[0] if lines else ''}"[:600]
    call = re.search(r'The following call raised this error:\s*\n\s*(File "[^"]+", line \d+, in \w+)\s*\n\s*(\S.*)', full)
    where = f" (raised at {call.group(1)}: `{call.group(2).strip()}`)" if call else ""
    missing_op = re.search(r"No ONNX function found for <OpOverload\(op='([^']+)'", full)
    if data_dependent(exc):
        hint = (
            "forward() branches on a tensor's value (data-dependent control flow): compute both sides and pick "
            "with torch.where, or use torch.cond for whole branches"
        )
    elif missing_op:
        hint = (
            f"the op {missing_op.group(1)} has no ONNX translation: write that part of forward() with other ops, "
            "or pass torch.onnx.export a custom_translation_table"
        )
    else:
        hint = (
            "the exporter failed inside torch or a library, not on a line of yours that the message can name; "
            "the TorchScript-based exporter often gets such a model through"
        )
    fallback = FALLBACK_HINT.format(model=model_arg) if offer_fallback else ""
    return PipelineError(
        STAGE,
        f"torch.onnx.export could not export {spec.name}: {reason}{where} (the exporter's full text: {log.shown})",
        f"{hint}{fallback}. The earlier stages' artifacts are unchanged and no model.onnx was written; "
        f"after fixing the model: python -m pipeline all --model {model_arg}",
    )


def export_torchscript_based(model, spec: ModelSpec, example: tuple[torch.Tensor, ...], path) -> None:
    """The fallback: torch.onnx.export(dynamo=False), the same names and dynamic axes."""
    axes = {t.name: {i: name for i, name in t.dynamic_axes().items()} for t in (*spec.inputs, *spec.outputs)}
    with _quiet_exporter(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # its deprecation notice: the manifest records which exporter made the graph
        torch.onnx.export(
            model,
            example,
            str(path),
            input_names=[t.name for t in spec.inputs],
            output_names=[t.name for t in spec.outputs],
            opset_version=OPSET,
            dynamo=False,
            dynamic_axes=axes,
        )


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
            # Inputs that share an axis name share one Dim; the exporter notes it on every run.
            warnings.filterwarnings("ignore", message=r"# The axis name: \w+ will not be used", category=UserWarning)
            yield
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)


def checked_graph(path, spec: ModelSpec) -> dict:
    """check_graph, with onnx.checker's failure as a PipelineError."""
    try:
        return check_graph(path, spec)
    except onnx.checker.ValidationError as exc:
        raise PipelineError(STAGE, f"exported ONNX graph fails onnx.checker: {exc}", "report this with the model") from None


def check_graph(path, spec: ModelSpec) -> dict:
    """onnx.checker plus our contract: names as declared, dynamic axes symbolic in the file."""
    onnx.checker.check_model(str(path), full_check=True)
    model = onnx.load(str(path), load_external_data=False)
    dims = symbolic_dims(model)
    elem_types = {
        v.name: onnx.helper.tensor_dtype_to_np_dtype(v.type.tensor_type.elem_type) for v in (*model.graph.input, *model.graph.output)
    }
    problems = []
    for t in (*spec.inputs, *spec.outputs):
        if t.name not in dims:
            problems.append(f"{t.name} is not a graph input/output (graph has {sorted(dims)})")
            continue
        got = dims[t.name]
        if elem_types[t.name] != np.dtype(t.dtype):
            problems.append(f"{t.name} is {elem_types[t.name]} in the graph, declared {t.dtype}")
        if len(got) != len(t.shape):
            problems.append(f"{t.name} has rank {len(got)}, declared {len(t.shape)}")
            continue
        for axis, name in t.dynamic_axes().items():
            if not isinstance(got[axis], str) or not got[axis]:
                problems.append(f"{t.name} axis {axis} ({name}) is fixed to {got[axis]} in the graph, not symbolic")
    if problems:
        raise PipelineError(
            STAGE,
            f"{spec.name}: exported graph breaks the declared contract: " + "; ".join(problems),
            "check the spec's inputs/outputs and that forward() does not specialise dynamic axes",
        )
    return {
        "opset": {op.domain or "ai.onnx": op.version for op in model.opset_import},
        "ir_version": model.ir_version,
        "producer": f"{model.producer_name} {model.producer_version}",
        "dims": dims,
    }


def weight_bytes(model: onnx_ir.Model) -> int:
    """The bytes of every initializer, subgraphs' included: what an embedded file would hold."""
    return sum(v.const_value.nbytes for g in model.graphs() for v in g.initializers.values() if v.const_value is not None)


def save_onnx(model: onnx_ir.Model, path: Path, external: bool) -> None:
    """Write `model` to `path`, its weights embedded or in `<path name>.data` beside it.

    `path` must carry its final name (`files.atomic_files` gives it one): the graph refers
    to its data file by that name, so a temporary name would be baked into the graph.
    onnx_ir writes each tensor from the memory it wraps (torch's own parameters after
    export), so the weights are not copied on the way out.
    """
    if external:
        onnx_ir.save(model, path, external_data=data_file_name(path.name))
    else:
        onnx_ir.save(model, path)


def fallback_to_external(model, spec: ModelSpec, example: tuple[torch.Tensor, ...], path: Path) -> None:
    """The TorchScript-based exporter for a model that needs external data: it scatters one file per
    tensor beside its output, so it writes into a folder of its own, and the graph is saved again as one pair."""
    scratch = path.parent / "torchscript-based"
    scratch.mkdir()
    export_torchscript_based(model, spec, example, scratch / path.name)
    save_onnx(onnx_ir.load(scratch / path.name), path, external=True)


@contextlib.contextmanager
def onnx_target(path: Path, external: bool) -> Iterator[Path]:
    """Where to write model.onnx: alone and atomically, or with its data file in a private folder, moved in data first."""
    data = path.with_name(data_file_name(path.name))
    if external:
        with files.atomic_files(data, path) as (_, staged):
            yield staged
    else:
        with files.atomic_path(path) as tmp:
            yield tmp
        data.unlink(missing_ok=True)  # an earlier export's external data: nothing refers to it now


@dataclass(frozen=True)
class ExportJob:
    """One export: the model, its example inputs, and whether the TorchScript-based fallback may take over."""

    model: torch.nn.Module
    spec: ModelSpec
    example: tuple[torch.Tensor, ...]
    model_arg: str  # the model as the user named it, for the commands in messages
    fallback_allowed: bool
    log: StageLog  # where the exporters' full text goes; the terminal gets one line of it


@dataclass(frozen=True)
class DynamoAttempt:
    """The torch.export-based exporter's program, its checked graph once saved, or why the fallback must take over."""

    program: torch.onnx.ONNXProgram | None
    graph: dict | None = None
    failure: str | None = None
    fix: str = ""


@dataclass(frozen=True)
class Exported:
    """What was written: the graph's description, its weights and where they are, and why torch.export's graph was not used."""

    graph: dict
    weights: int
    external: bool
    dynamo_failure: str | None


def export_dynamo(job: ExportJob) -> DynamoAttempt:
    """torch.onnx.export(dynamo=True) in memory; a failure raises unless the fallback is allowed."""
    spec = job.spec
    try:
        with _quiet_exporter(), capture_mode():
            program = torch.onnx.export(
                job.model,
                job.example,
                input_names=[t.name for t in spec.inputs],
                output_names=[t.name for t in spec.outputs],
                opset_version=OPSET,
                dynamo=True,
                dynamic_shapes=positional_shapes(job.model, spec),
                verbose=False,
                report=False,
            )
    except Exception as exc:  # the exporter raises many types; all mean "cannot export"
        # A branch on a tensor's value is the model's, not the exporter's, limit: the
        # TorchScript-based exporter would bake in the side the example took.
        if not job.fallback_allowed or data_dependent(exc):
            raise exporter_failure(spec, exc, job.model_arg, job.log, offer_fallback=not data_dependent(exc)) from None
        failure = exporter_failure(spec, exc, job.model_arg, job.log, offer_fallback=False)
        return DynamoAttempt(None, failure=failure.problem, fix=failure.fix)
    return DynamoAttempt(program)


def save_dynamo(job: ExportJob, program: torch.onnx.ONNXProgram, path: Path, external: bool) -> DynamoAttempt:
    """Save torch.export's graph and check it against the contract; a breach raises unless the fallback is allowed."""
    # Not program.save: past 1.5 GB it writes external data named after `path`.
    save_onnx(program.model, path, external)
    try:
        return DynamoAttempt(program, checked_graph(path, job.spec))
    except PipelineError as exc:
        # The exporter can also succeed with a graph that breaks the contract: it
        # fixes a recurrent layer's time axis to the example's length.
        if not job.fallback_allowed:
            raise PipelineError(STAGE, exc.problem, exc.fix + FALLBACK_HINT.format(model=job.model_arg)) from None
        return DynamoAttempt(None, failure=exc.problem, fix=exc.fix)


def export_fallback(job: ExportJob, dynamo: DynamoAttempt, path: Path, external: bool) -> dict:
    """The TorchScript-based exporter, after torch.export's failed; its graph checked like the other's."""
    try:
        with capture_mode():
            if external:
                fallback_to_external(job.model, job.spec, job.example, path)
            else:
                export_torchscript_based(job.model, job.spec, job.example, path)
    except Exception as fallback_exc:
        job.log.append(f"\n\ntorch.onnx.export(dynamo=False) of {job.spec.name}\n\n{''.join(traceback.format_exception(fallback_exc))}")
        first = str(fallback_exc).strip().splitlines()
        tried = f"{type(fallback_exc).__name__}: {first[0] if first else ''}"[:300]
        raise PipelineError(
            STAGE,
            f"both exporters failed. 1. torch.export-based: {dynamo.failure}; 2. TorchScript-based: {tried}",
            dynamo.fix.split(". The earlier stages")[0] + f". Both exporters' full text: {job.log.shown}",
        ) from None
    return checked_graph(path, job.spec)


def export_onnx(job: ExportJob, path: Path, external_data_threshold: int) -> Exported:
    """Export and check `path` (and its data file, when the weights pass the threshold), written atomically."""
    dynamo = export_dynamo(job)
    weights = weight_bytes(dynamo.program.model) if dynamo.program is not None else module_weight_bytes(job.model)
    external = weights > external_data_threshold
    with onnx_target(path, external) as tmp:
        if dynamo.program is not None:
            dynamo = save_dynamo(job, dynamo.program, tmp, external)
        graph = dynamo.graph if dynamo.graph is not None else export_fallback(job, dynamo, tmp, external)
    return Exported(graph, weights, external, dynamo.failure)


def _details(exported: Exported, layout: Layout) -> dict:
    """The manifest's onnx record: the graph, which exporter made it, and where its weights are."""
    graph = exported.graph
    graph["exporter"] = "TorchScript-based (dynamo=False), the fallback" if exported.dynamo_failure else "torch.export-based (dynamo=True)"
    graph["weights"] = "external" if exported.external else "embedded"
    graph["weight_bytes"] = exported.weights
    if exported.external:
        data = layout.onnx.with_name(data_file_name(layout.onnx.name))
        graph[EXTERNAL_DATA] = {
            "path": str(data.relative_to(layout.root)),
            "sha256": files.sha256_file(data),
            "bytes": data.stat().st_size,
        }
    if exported.dynamo_failure:
        graph["dynamo_failure"] = exported.dynamo_failure
    return graph


def _summary(exported: Exported, spec: ModelSpec, layout: Layout) -> str:
    graph = exported.graph
    batch = graph["dims"][spec.inputs[0].name][0]
    return (
        f"opset {graph['opset'].get('ai.onnx')}, IR {graph['ir_version']}, batch axis symbolic ({batch!r})"
        + (f", weights in {data_file_name(layout.onnx.name)} ({exported.weights / 2**20:,.1f} MiB)" if exported.external else "")
        + (f"; made by the TorchScript-based exporter, because {exported.dynamo_failure}" if exported.dynamo_failure else "")
    )


def run(settings: Settings, external_data_threshold: int = EXTERNAL_DATA_THRESHOLD) -> StageResult:
    """Export the verified checkpoint to model.onnx; weights over `external_data_threshold` bytes go to model.onnx.data.

    The threshold is an argument for tests, which force the external-data path on a small model.
    """
    spec, layout = resolve(settings)
    manifest = Manifest(layout.root, spec.name, settings.model)
    model, ckpt_sha = checkpoint.load_model(manifest, spec, STAGE)
    inputs = {"checkpoint": ckpt_sha}
    fallback_allowed = settings.exporter_fallback or spec.exporter_fallback
    stage_settings = {
        "opset": OPSET,
        "dynamo": True,
        "exporter_fallback": fallback_allowed,
        "seed": settings.seed,
        "torch": torch.__version__,
        "model_source_sha256": spec.source_sha256(),
        "external_data_threshold": external_data_threshold,
    }  # the example inputs live in the model file
    if skipped := up_to_date(manifest, ONNX, inputs, stage_settings, settings, STAGE, (layout.onnx,)):
        return skipped

    start = time.perf_counter()
    # Batch 4, not 1: torch.export specialises axes whose example size is 0 or 1.
    example = example_args(spec, 4, settings.seed, STAGE)
    check_example(spec, example)
    run_once(model, example)
    job = ExportJob(model, spec, example, settings.model, fallback_allowed, StageLog.of(layout, STAGE))
    exported = export_onnx(job, layout.onnx, external_data_threshold)
    seconds = time.perf_counter() - start
    graph = _details(exported, layout)
    manifest.record(ONNX, layout.onnx, STAGE, inputs, stage_settings, seconds, graph)
    return StageResult(STAGE, False, (layout.onnx,), seconds, _summary(exported, spec, layout), graph)
