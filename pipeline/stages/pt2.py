"""Stage 4: torch.export and AOTInductor, TorchScript's successor: `model.pt2`, compiled kernels with no Python model code.

`torch.export.export` captures the verified checkpoint with the same dynamic shapes as the
ONNX export (`export.positional_shapes`, one definition), and
`torch._inductor.aoti_compile_and_package` compiles it for the CPU (g++; with freezing, the
documented CPU advice: weights become constants the compiler folds), and for CUDA where the
machine has it (`model.cuda.pt2`). Each package is recorded in the manifest with its sha256,
the compile time, and what it is tied to (`pipeline.runtimes.pt2.tied_to`: device, CPU
instruction set, torch, compiler), which is also part of its settings: a package from another
machine or torch is rebuilt here, and one carried elsewhere in an archive is refused at load.

The package is optional, as TorchScript is: a model torch.export cannot take (a branch on a
tensor's value, an op inductor lacks) gets a `[pt2]` reason and what to do in the manifest, in
place of the file, and the chain goes on with the artifacts it has. Parity holds the package to
eager like every other engine; `--no-pt2` skips it on purpose.
"""

from __future__ import annotations

import time
import traceback
import warnings
from dataclasses import dataclass
from typing import Any

import torch

from pipeline.artifacts import checkpoint, files
from pipeline.artifacts.manifest import Manifest
from pipeline.artifacts.names import ONNX, TORCHSCRIPT, pt2_key
from pipeline.errors import PipelineError
from pipeline.runtimes import pt2 as runtime
from pipeline.settings import Layout, Settings, StageResult, resolve
from pipeline.spec import ModelSpec
from pipeline.stages.capture import StageLog, capture_mode, example_args, run_once
from pipeline.stages.export import check_example, data_dependent, positional_shapes
from pipeline.stages.fresh import not_made_note, record_not_made, up_to_date

STAGE = "pt2"
# Inductor's settings for the package, recorded with it (TORCHINDUCTOR_FREEZING=1 is the same switch).
INDUCTOR_CONFIGS = {"freezing": True}


class NotExportable(PipelineError):
    """torch.export or AOTInductor cannot make a package of this model; the chain goes on without it."""


@dataclass(frozen=True)
class Compiled:
    """A package written and loaded back: how long export and compile took, and what it is tied to."""

    export_s: float
    compile_s: float
    tied_to: dict
    warnings: list[str]
    refined: str | None  # the bounds torch.export asked for and the capture took (seq <= 512), or None


def failure(spec: ModelSpec, exc: BaseException, step: str, log: StageLog) -> NotExportable:
    """The innermost reason, in one line, and what to do; the full text goes to `log`."""
    log.write(f"{step} of {spec.name}\n\n{''.join(traceback.format_exception(exc))}\n")
    root: BaseException = exc
    while root.__cause__ is not None:
        root = root.__cause__
    first = next((line.strip() for line in str(root).splitlines() if line.strip()), "")
    if data_dependent(exc):
        fix = "forward() branches on a tensor's value: compute both sides and pick with torch.where, or use torch.cond for whole branches"
    elif step == "torch.export.export":
        fix = "torch.export cannot capture forward() as it is written; rewrite the part the message names"
    else:
        fix = "AOTInductor could not compile the exported program; try another torch release, or serve the ONNX graph"
    return NotExportable(
        STAGE,
        f"{step} could not make a package of {spec.name}: {type(root).__name__}: {first[:300]} (the full text: {log.shown})",
        f"{fix}. The chain goes on with the other artifacts; --no-pt2 (EXPORT_ARGS=--no-pt2) skips this stage on purpose",
    )


def export_program(model: torch.nn.Module, args: tuple[torch.Tensor, ...], shapes: Any) -> tuple[torch.export.ExportedProgram, str | None]:
    """torch.export.export with the declared dynamic shapes; where the model bounds an axis (BERT's 512
    positions), the bounds torch.export suggests are taken, once, as the ONNX exporter takes them.

    Returns the program and the suggested fixes it took (None when the declared shapes held as they are).
    """
    from torch.export.dynamic_shapes import refine_dynamic_shapes_from_suggested_fixes

    try:
        return torch.export.export(model, args, dynamic_shapes=shapes), None
    except torch._dynamo.exc.UserError as exc:
        if "Suggested fixes:" not in exc.msg:
            raise
        refined = refine_dynamic_shapes_from_suggested_fixes(exc.msg, shapes)
        fixes = " ".join(exc.msg.split("Suggested fixes:")[1].split())
        return torch.export.export(model, args, dynamic_shapes=refined), fixes


def fixed_axes(program: torch.export.ExportedProgram, spec: ModelSpec) -> list[str]:
    """The declared dynamic axes the exported program took as fixed sizes (as ONNX's check_graph asks of its graph)."""
    user_inputs = set(program.graph_signature.user_inputs)
    placeholders = [n for n in program.graph.nodes if n.op == "placeholder" and n.name in user_inputs]
    fixed = []
    for t, node in zip(spec.inputs, placeholders):
        shape = node.meta["val"].shape
        for axis, name in t.dynamic_axes().items():
            if isinstance(shape[axis], int):
                fixed.append(f"{t.name} axis {axis} ({name}) to {shape[axis]}")
    return fixed


def compile_package(model: torch.nn.Module, spec: ModelSpec, example: tuple[torch.Tensor, ...], layout: Layout, device: str) -> Compiled:
    """Export, compile for `device`, write atomically, then load the package back and check it answers as eager."""
    log = StageLog.of(layout, STAGE)
    start = time.perf_counter()
    moved = model.to(device)
    args = tuple(a.to(device) for a in example)
    try:
        with capture_mode(), warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            program, refined = export_program(moved, args, positional_shapes(model, spec))
    except Exception as exc:  # torch.export raises many types; all mean "cannot capture"
        raise failure(spec, exc, "torch.export.export", log) from None
    fixed = fixed_axes(program, spec)
    if fixed:
        raise NotExportable(
            STAGE,
            f"torch.export fixed {spec.name}'s {', '.join(fixed)}: the package would take only the example's size there",
            "write forward() so that the axis stays symbolic under torch.export (no Python int taken from its size); "
            "the chain goes on with the other artifacts; --no-pt2 (EXPORT_ARGS=--no-pt2) skips this stage on purpose",
        )
    exported = time.perf_counter()
    path = layout.pt2(device)
    tied = runtime.tied_to(device)
    try:
        with files.atomic_files(path) as (staged,), warnings.catch_warnings():
            # torch's own pytree deprecation, raised inside the packager: not the user's to act on.
            warnings.simplefilter("ignore", FutureWarning)
            torch._inductor.aoti_compile_and_package(program, package_path=str(staged), inductor_configs=dict(INDUCTOR_CONFIGS))
    except (files.DiskFullError, PipelineError):
        raise
    except Exception as exc:  # inductor and the C++ compiler fail in many ways; all mean "no package"
        raise failure(spec, exc, "torch._inductor.aoti_compile_and_package", log) from None
    compiled = time.perf_counter()
    check_loads_back(moved, args, spec, path, device)
    model.to("cpu")
    found = sorted({f"{w.category.__name__}: {w.message}" for w in caught})  # kept for the manifest, not printed
    return Compiled(round(exported - start, 3), round(compiled - exported, 3), tied, found, refined)


def check_loads_back(model: torch.nn.Module, args: tuple[torch.Tensor, ...], spec: ModelSpec, path, device: str) -> None:
    """Load the package and run the example once: one that cannot load, or answers otherwise, fails here."""
    session = runtime.Pt2Session(path, [t.name for t in spec.inputs], device)
    got = session.run([t.name for t in spec.outputs], {t.name: a.cpu().numpy() for t, a in zip(spec.inputs, args)})
    with torch.inference_mode(), capture_mode():
        want = model(*args)
    want = want if isinstance(want, (tuple, list)) else (want,)
    same = len(want) == len(got) and all(
        w.shape == g.shape and torch.allclose(w.detach().cpu().double(), torch.from_numpy(g).double(), atol=1e-4, rtol=1e-3)
        for w, g in zip(want, got)
    )
    if not same:
        raise PipelineError(
            STAGE, f"{path.name} loaded back gives different outputs from eager", "report this with the model; parity shows the size of it"
        )


def run(settings: Settings) -> StageResult:
    """Compile the verified checkpoint into an AOTInductor package per device; skipped when nothing it depends on changed."""
    spec, layout = resolve(settings)
    manifest = Manifest(layout.root, spec.name, settings.model)
    ckpt_sha = manifest.verified("checkpoint", STAGE)[1].sha256
    results = [_one(settings, spec, layout, manifest, ckpt_sha, device) for device in runtime.devices()]
    if len(results) == 1:
        return results[0]
    return StageResult(
        STAGE,
        all(r.skipped for r in results),
        tuple(p for r in results for p in r.outputs),
        sum(r.seconds for r in results),
        "; ".join(f"{d}: {r.summary}" for d, r in zip(runtime.devices(), results)),
        {d: r.details for d, r in zip(runtime.devices(), results)},
    )


def made_so_far(manifest: Manifest, layout: Layout) -> str:
    """The artifacts the chain has besides the package (model.onnx, and model.ts where it was made), by file name."""
    made = [layout.onnx.name] if ONNX in manifest.records else []
    ts = manifest.records.get(TORCHSCRIPT)
    if ts is not None and not ts.not_made:
        made.append(layout.torchscript.name)
    return " and ".join(made) or "the checkpoint"


def _one(settings: Settings, spec: ModelSpec, layout: Layout, manifest: Manifest, ckpt_sha: str, device: str) -> StageResult:
    key, path = pt2_key(device), layout.pt2(device)
    inputs = {"checkpoint": ckpt_sha}
    stage_settings = {
        "seed": settings.seed,
        "model_source_sha256": spec.source_sha256(),  # the example inputs live in the model file
        "inductor_configs": INDUCTOR_CONFIGS,
        "tied_to": runtime.tied_to(device),  # another machine's or torch's package is rebuilt here
        "pt2": settings.pt2,
    }
    if skipped := up_to_date(manifest, key, inputs, stage_settings, settings, STAGE, (path,)):
        if not skipped.details.get("not_made"):
            return skipped
        return StageResult(
            STAGE, True, skipped.outputs, 0.0, f"package not made (up to date): {skipped.details['not_made']}", skipped.details
        )
    goes_on = f"package not made, the chain goes on with {made_so_far(manifest, layout)}"
    if not settings.pt2:
        why = NotExportable(STAGE, "not asked for (--no-pt2)", "drop --no-pt2 to make the AOTInductor package as well")
        return record_not_made(manifest, key, path, why, inputs, stage_settings, 0.0, goes_on)
    if spec.generation is not None:
        why = NotExportable(
            STAGE,
            f"{spec.name} is a text-generation model: it is served from its ONNX graph with the key/value cache, which parity "
            "holds to eager token for token. Its package is not made: under torch.export, transformers' decoder code guards "
            "on the batch (batch != 1) and on the cache's length, so one package would not take a lone prompt and an empty "
            "cache (the prefill) as the ONNX graph does",
            "nothing to do; the archive serves the ONNX graph, and python -m pipeline generate runs it",
        )
        return record_not_made(manifest, key, path, why, inputs, stage_settings, 0.0, goes_on)
    if "(not found)" in (cxx := runtime.compiler()):
        why = NotExportable(
            STAGE,
            f"AOTInductor compiles C++, and this machine has no C++ compiler ({cxx})",
            "install one (Debian and Ubuntu: apt-get install g++; or set CXX to yours), then run the stage again; "
            "--no-pt2 (EXPORT_ARGS=--no-pt2) skips it on purpose",
        )
        return record_not_made(manifest, key, path, why, inputs, stage_settings, 0.0, goes_on)
    start = time.perf_counter()
    model, _ = checkpoint.load_model(manifest, spec, STAGE)
    example = example_args(spec, 4, settings.seed, STAGE)  # batch 4: torch.export fixes an axis whose example is 0 or 1
    check_example(spec, example)
    run_once(model, example)
    try:
        made = compile_package(model, spec, example, layout, device)
    except NotExportable as why:
        return record_not_made(manifest, key, path, why, inputs, stage_settings, time.perf_counter() - start, goes_on)
    not_made_note(path).unlink(missing_ok=True)
    seconds = time.perf_counter() - start
    details = {
        "device": device,
        "export_s": made.export_s,
        "compile_s": made.compile_s,
        "tied_to": made.tied_to,
        "inductor": INDUCTOR_CONFIGS,
        "warnings": made.warnings,  # torch.export's, kept here instead of printed
        "refined_shapes": made.refined,
    }
    manifest.record(key, path, STAGE, inputs, stage_settings, seconds, details)
    summary = f"{path.name} for {device} ({made.tied_to['cpu_isa']}), {files.human_bytes(path.stat().st_size)}: export {made.export_s:.1f} s, compile {made.compile_s:.1f} s"
    return StageResult(STAGE, False, (path,), seconds, summary, details)
