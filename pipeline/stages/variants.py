"""Smaller, faster variants of the verified model: int8 for the CPU, fp16 for CUDA.

`python -m pipeline variants --int8 --fp16` (or `make export VARIANTS=int8`). Each
variant is an artifact of its own, `artifacts/<model>/model.<variant>.onnx`, made from
the fp32 ONNX file parity passed with ONNX Runtime's own tools, and it must pass two
gates before it is packaged as `model_store/<model>-<variant>.mar`:

1. parity against eager fp32 with the variant's declared tolerance (the spec's
   `int8_tolerance` / `fp16_tolerance`), on the device the variant is for; the report
   shows each output's error distribution, not only the worst element;
2. the task metric (the spec's `task_metric`), on held-out data: the variant may be at
   most `max_drop` worse than fp32 ONNX Runtime on the same device.

Either failing blocks that variant's archive. The fp32 artifacts and archive are never
touched, and a failed variant's ONNX file stays for inspection, unrecorded as passed.

int8 is chosen per model and the reason recorded: static quantization (QDQ, calibrated
on the spec's `calibration_inputs`, else its `sample_inputs`) where the graph has
convolutions, dynamic quantization (int8 weights, activations quantized per call) where
it is MatMul/Gemm only. A convolution with a shallow reduction (input channels ×
kernel below `SHALLOW_CONV`) stays fp32: ONNX Runtime's int8 kernel for digits_cnn's
1-channel 3×3 convolution took 160 µs per batch of 64 where fp32 took 20 µs.
fp16 keeps float32 inputs and outputs, so the HTTP contract is unchanged.
"""

from __future__ import annotations

import contextlib
import logging
import tempfile
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import onnx

from pipeline.artifacts import checkpoint, files
from pipeline.artifacts.environment import fingerprint
from pipeline.artifacts.manifest import ArtifactRecord, Manifest
from pipeline.artifacts.names import CHECKPOINT, EXTERNAL_DATA, ONNX, PARITY, VARIANTS, archive_key, gate_key
from pipeline.errors import ParityError, PipelineError, SpecError
from pipeline.runtimes.runners import OrtRunner, TorchRunner, cuda_available
from pipeline.runtimes.session import SessionConfig
from pipeline.settings import Layout, Settings, StageResult, resolve
from pipeline.spec import ModelSpec, Tolerance
from pipeline.stages import package, parity
from pipeline.stages.capture import capture_mode
from pipeline.stages.fresh import up_to_date

if TYPE_CHECKING:
    import torch

STAGE = "variants"
# The device each variant is made for, verified on, and served on.
DEVICE = {"int8": "cpu", "fp16": "cuda"}
# A convolution whose reduction depth (input channels per group × kernel area) is below
# this stays fp32 in the int8 variant: too shallow for an int8 GEMM to win.
SHALLOW_CONV = 32
CALIBRATION_ROWS = 256
# Rows per calibration run. ONNX Runtime's MinMax calibrator appends a ReduceMin and a
# ReduceMax for every activation at the end of the graph, so each run holds all of its
# activations at once: ResNet-50 peaked at 14 GiB with 64 rows a run, 2.6 GiB with 8. The
# ranges are the min and max over every row whatever the split, so the variant is the same.
CALIBRATION_BATCH = 8


def tolerance_of(spec: ModelSpec, variant: str) -> Tolerance:
    tol = spec.int8_tolerance if variant == "int8" else spec.fp16_tolerance
    if tol is None:
        raise SpecError(
            STAGE,
            f"{spec.name}: the spec declares no {variant}_tolerance, so the {variant} variant has nothing to be held to",
            f"declare the error {variant} may make against eager fp32 in the model's spec, e.g. "
            f"{variant}_tolerance=Tolerance(atol=0.05, rtol=0.05, max_mismatch=0.01), and a task_metric",
        )
    return tol


@contextlib.contextmanager
def _quiet_quantizer() -> Iterator[None]:
    """ONNX Runtime's quantizer logs advice through the root logger; the report says what was done."""
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        yield
    finally:
        root.setLevel(level)


def _conv_depth(node: onnx.NodeProto, weights: dict[str, onnx.TensorProto]) -> int | None:
    weight = weights.get(node.input[1]) if len(node.input) > 1 else None
    if weight is None or len(weight.dims) < 3:
        return None
    depth = 1
    for d in weight.dims[1:]:  # [out, in / group, *kernel]
        depth *= int(d)
    return depth


def int8_plan(model: onnx.ModelProto) -> dict[str, Any]:
    """Which quantization this graph gets, the nodes left in fp32, and why."""
    graph = model.graph
    ops = [n.op_type for n in graph.node]
    weights = {t.name: t for t in graph.initializer}
    convs = [n for n in graph.node if n.op_type == "Conv"]
    matmuls = ops.count("MatMul") + ops.count("Gemm")
    if not convs and not matmuls:
        raise PipelineError(
            STAGE,
            f"the graph has no Conv, MatMul or Gemm node to quantize (it has {sorted(set(ops))})",
            "int8 would only add conversions to this model; ship the fp32 archive",
        )
    if not convs:
        return {
            "method": "dynamic",
            "why": f"no convolutions; {matmuls} MatMul/Gemm node(s) get int8 weights and their inputs are "
            "quantized per call, so no calibration data is needed",
            "fp32_nodes": [],
        }
    shallow = {n.name: d for n in convs if (d := _conv_depth(n, weights)) is not None and d < SHALLOW_CONV}
    why = f"{len(convs)} convolution(s): static quantization calibrated on representative inputs fits them best"
    if shallow:
        why += (
            f"; {', '.join(f'{k} (depth {v})' for k, v in shallow.items())} stay fp32: a reduction shallower than "
            f"{SHALLOW_CONV} is slower in ONNX Runtime's int8 kernel than in fp32"
        )
    return {"method": "static", "why": why, "fp32_nodes": sorted(shallow)}


def calibration_feed(spec: ModelSpec, seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    if spec.calibration_inputs is not None:
        return spec.check_feed(spec.calibration_inputs(rng), "calibration_inputs", STAGE)
    return spec.check_feed(spec.sample_inputs(CALIBRATION_ROWS, rng), "sample_inputs (for calibration)", STAGE)


@contextlib.contextmanager
def _tools(what: str) -> Iterator[None]:
    """ONNX Runtime's conversion tools are Python modules beside the runtime; a partial install lacks them."""
    try:
        yield
    except ImportError as exc:
        raise PipelineError(
            STAGE,
            f"{what} cannot be imported ({type(exc).__name__}: {exc}); this onnxruntime install is missing its Python tools",
            "reinstall the pinned runtime: pip install -c constraints.txt --force-reinstall --no-deps onnxruntime-gpu onnx-ir",
        ) from None


def make_int8(spec: ModelSpec, source: Path, target: Path, seed: int) -> dict[str, Any]:
    """Quantize `source` into `target`; returns the plan that was carried out."""
    with _tools("onnxruntime.quantization"):
        from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_dynamic, quantize_static

    model = onnx.load(str(source))
    plan = int8_plan(model)
    # The exporter's intermediate shapes can disagree with ONNX's own shape inference,
    # which the quantizer runs: quantize a copy without them (inputs and outputs stay).
    del model.graph.value_info[:]
    with tempfile.TemporaryDirectory(prefix="quantize-") as tmp, _quiet_quantizer():
        plain = Path(tmp) / "model.onnx"
        onnx.save(model, str(plain))
        if plan["method"] == "dynamic":
            quantize_dynamic(plain, target, weight_type=QuantType.QInt8, op_types_to_quantize=["MatMul", "Gemm"])
        else:
            feed = calibration_feed(spec, seed)
            rows = len(next(iter(feed.values())))
            batches = iter([{k: v[i : i + CALIBRATION_BATCH] for k, v in feed.items()} for i in range(0, rows, CALIBRATION_BATCH)])

            class Calibration(CalibrationDataReader):
                def get_next(self) -> dict[str, np.ndarray] | None:
                    return next(batches, None)

            quantize_static(
                plain,
                target,
                Calibration(),
                quant_format=QuantFormat.QDQ,
                activation_type=QuantType.QUInt8,
                weight_type=QuantType.QInt8,
                nodes_to_exclude=plan["fp32_nodes"],
            )
            plan["calibration_rows"] = rows
            plan["calibration_source"] = "calibration_inputs" if spec.calibration_inputs is not None else "sample_inputs"
            plan["format"] = "QDQ, uint8 activations, int8 weights, per tensor"
    return plan


def make_fp16(source: Path, target: Path) -> dict[str, Any]:
    """Weights and compute in float16; inputs and outputs stay float32 (the contract is unchanged)."""
    with _tools("onnxruntime.transformers.float16 and onnx_ir"):
        import onnx_ir
        from onnxruntime.transformers.float16 import convert_float_to_float16

    converted = onnx_ir.from_proto(convert_float_to_float16(onnx.load(str(source)), keep_io_types=True))
    converted.graph.sort()  # the converter appends its input casts after the nodes that read them
    model = onnx_ir.to_proto(converted)
    onnx.checker.check_model(model)
    onnx.save(model, str(target))
    return {"method": "float16", "why": "fp16 weights and arithmetic for CUDA; float32 inputs and outputs keep the HTTP contract"}


def build(settings: Settings, variant: str) -> StageResult:
    """artifacts/<model>/model.<variant>.onnx from the fp32 file parity passed."""
    spec, layout = resolve(settings)
    manifest = Manifest(layout.root, spec.name, settings.model)
    onnx_path, onnx_rec = manifest.verified(ONNX, STAGE)
    parity_rec = manifest.records.get(PARITY)
    if parity_rec is None or parity_rec.inputs.get(ONNX) != onnx_rec.sha256 or not parity_rec.details.get("passed"):
        raise PipelineError(
            STAGE,
            f"{spec.name}: parity has not passed for the current {onnx_rec.path}; a variant is made only from a verified model",
            f"run the stages first: python -m pipeline all --model {settings.model}",
        )
    if onnx_rec.details.get(EXTERNAL_DATA):
        # The quantizer and the fp16 converter load the whole model into one protobuf message.
        raise PipelineError(
            STAGE,
            f"{spec.name}: {onnx_rec.path} keeps its {onnx_rec.details.get('weight_bytes', 0) / 2**30:.1f} GiB of weights in "
            "external data; the variants are made only from models with their weights embedded (under 2 GiB)",
            "serve the fp32 archive (python -m pipeline serve), which carries its data file",
        )
    target = layout.variant_onnx(variant)
    inputs = {ONNX: onnx_rec.sha256}
    stage_settings = {"variant": variant, "seed": settings.seed, "model_source_sha256": spec.source_sha256(), "shallow_conv": SHALLOW_CONV}
    if skipped := up_to_date(manifest, variant, inputs, stage_settings, settings, STAGE, (target,), label=f"{variant}: "):
        return skipped
    start = time.perf_counter()
    with files.atomic_path(target) as tmp:
        plan = make_int8(spec, onnx_path, tmp, settings.seed) if variant == "int8" else make_fp16(onnx_path, tmp)
    seconds = time.perf_counter() - start
    plan["bytes"] = target.stat().st_size
    plan["size_vs_fp32"] = plan["bytes"] / onnx_rec.bytes
    rec = manifest.record(variant, target, STAGE, inputs, stage_settings, seconds, plan)
    return StageResult(
        STAGE, False, (target,), seconds, f"{variant}: {rec.path}, {plan['method']}, {plan['size_vs_fp32']:.2f}× the fp32 size", plan
    )


def _metric(spec: ModelSpec, runner: OrtRunner, seed: int) -> float:
    assert spec.task_metric is not None
    try:
        value = spec.task_metric.evaluate(runner.infer, seed)
    except PipelineError:
        raise
    except Exception as exc:  # the model's own hook
        raise SpecError(
            STAGE,
            f"{spec.name}: task_metric.evaluate failed on {runner.name}: {type(exc).__name__}: {exc}",
            "fix the model's evaluate(infer, seed) hook; it must return one number",
        ) from None
    if isinstance(value, bool) or not isinstance(value, (int, float, np.floating)) or not np.isfinite(value):
        raise SpecError(STAGE, f"{spec.name}: task_metric.evaluate returned {value!r}", "return one finite number")
    return float(value)


def gate_batch_sizes(settings: Settings, manifest: Manifest) -> tuple[int, ...]:
    """The batch sizes fp32's parity ran: its sized sweep already measured what fits."""
    rec = manifest.records.get(PARITY)
    ran = None if rec is None else rec.details.get("batch_sizes")
    return tuple(b for b in settings.parity_batch_sizes if ran is None or b in ran)


@dataclass(frozen=True)
class GatePlan:
    """What one variant's gate compares, on which device, under which bounds, and what its record depends on."""

    spec: ModelSpec
    layout: Layout
    manifest: Manifest
    variant: str
    tol: Tolerance
    path: Path
    rec: ArtifactRecord
    onnx_path: Path
    onnx_rec: ArtifactRecord
    model: torch.nn.Module
    train_seed: int
    inputs: dict[str, str]
    stage_settings: dict[str, Any]

    @property
    def device(self) -> str:
        return DEVICE[self.variant]

    @property
    def key(self) -> str:
        return gate_key(self.variant)

    @property
    def report_json(self) -> Path:
        return self.layout.reports / f"variant-{self.variant}.json"


def plan_gate(settings: Settings, variant: str) -> GatePlan:
    spec, layout = resolve(settings)
    manifest = Manifest(layout.root, spec.name, settings.model)
    tol = tolerance_of(spec, variant)
    device = DEVICE[variant]
    path, rec = manifest.verified(variant, STAGE)
    onnx_path, onnx_rec = manifest.verified(ONNX, STAGE)
    model, ckpt_sha = checkpoint.load_model(manifest, spec, STAGE)
    train_seed = int(manifest.records[CHECKPOINT].settings.get("seed", settings.seed))
    inputs = {variant: rec.sha256, ONNX: onnx_rec.sha256, CHECKPOINT: ckpt_sha}
    metric = spec.task_metric
    stage_settings = {
        "tolerance": asdict(tol),
        "device": device,
        "batch_sizes": list(gate_batch_sizes(settings, manifest)),
        "seed": settings.seed,
        "model_source_sha256": spec.source_sha256(),
        "task_metric": None if metric is None else {"name": metric.name, "max_drop": metric.max_drop},
    }
    return GatePlan(spec, layout, manifest, variant, tol, path, rec, onnx_path, onnx_rec, model, train_seed, inputs, stage_settings)


def _require_device(g: GatePlan, model_arg: str) -> None:
    if g.device == "cuda" and not cuda_available():
        g.manifest.forget(g.key)
        raise PipelineError(
            STAGE,
            f"{g.spec.name}: the {g.variant} variant is for CUDA and is verified on CUDA only; this machine has no CUDA device",
            f"run python -m pipeline variants --model {model_arg} --{g.variant} on a machine with an NVIDIA GPU and onnxruntime-gpu",
        )


@dataclass(frozen=True)
class GateResult:
    """What the gate measured: every comparison, each output over every case, and the task metric (None: none declared)."""

    engine: str
    results: list[parity.OutputDiff]
    outputs: dict[str, dict[str, Any]]
    task: dict[str, Any] | None

    @property
    def parity_passed(self) -> bool:
        return all(o["passed"] for o in self.outputs.values())

    @property
    def passed(self) -> bool:
        return self.parity_passed and (self.task is None or self.task["passed"])

    @property
    def worst(self) -> parity.OutputDiff:
        return max(self.results, key=lambda r: (self.outputs[r.output]["beyond"], r.beyond, r.tolerance_used))


def measure_variant(g: GatePlan, settings: Settings) -> GateResult:
    """The variant against eager fp32 on every parity case, then the task metric against fp32 ONNX Runtime on its device."""
    config = SessionConfig(g.device)  # type: ignore[arg-type]  # DEVICE's values are devices
    candidate = OrtRunner(f"onnxruntime-{g.device} {g.variant}", g.path, g.spec, config)
    results = _compare_cases(g, candidate, settings)
    outputs = _per_output(g.spec, results, g.tol)
    return GateResult(candidate.name, results, outputs, _task_metric(g, candidate, config))


def _compare_cases(g: GatePlan, candidate: OrtRunner, settings: Settings) -> list[parity.OutputDiff]:
    reference = TorchRunner(parity.REFERENCE, g.model, g.spec)
    results: list[parity.OutputDiff] = []
    for case, feed in parity.cases(g.spec, gate_batch_sizes(settings, g.manifest), settings.seed):
        with capture_mode():
            want = reference.infer(feed)
        got = candidate.infer(feed)
        results.extend(parity.compare(candidate.name, case, t.name, want[t.name], got[t.name], g.tol) for t in g.spec.outputs)
    return results


def _per_output(spec: ModelSpec, results: list[parity.OutputDiff], tol: Tolerance) -> dict[str, dict[str, Any]]:
    # max_mismatch counts over every case of an output: a flipped label is one element in
    # the thousand-odd rows checked, not a quarter of the four edge images it fell in.
    per_output = {}
    for t in spec.outputs:
        rows = [r for r in results if r.output == t.name]
        elements = sum(r.elements for r in rows)
        beyond = sum(r.beyond * r.elements for r in rows) / max(elements, 1)
        per_output[t.name] = {
            "elements": elements,
            "beyond": beyond,
            "max_abs": max(r.max_abs for r in rows),
            "passed": beyond <= tol.max_mismatch and all(r.elements for r in rows),
        }
    return per_output


def _task_metric(g: GatePlan, candidate: OrtRunner, config: SessionConfig) -> dict[str, Any] | None:
    metric = g.spec.task_metric
    if metric is None:
        return None
    fp32 = _metric(g.spec, OrtRunner(f"onnxruntime-{g.device} fp32", g.onnx_path, g.spec, config), g.train_seed)
    value = _metric(g.spec, candidate, g.train_seed)
    drop = metric.drop(fp32, value)
    return {
        "name": metric.name,
        "fp32": fp32,
        g.variant: value,
        "drop": drop,
        "max_drop": metric.max_drop,
        "higher_is_better": metric.higher_is_better,
        "passed": drop <= metric.max_drop,
    }


def gate_report(g: GatePlan, result: GateResult) -> dict:
    """variant-<variant>.json: both gates' figures, with the bounds and inputs they were measured under."""
    return {
        "model": g.spec.name,
        "variant": g.variant,
        "passed": result.passed,
        "parity_passed": result.parity_passed,
        "reference": "eager fp32 (cpu)",
        "engine": result.engine,
        "device": g.device,
        "tolerance": asdict(g.tol),
        "build": g.manifest.records[g.variant].details,
        "task_metric": result.task,
        "worst": asdict(result.worst),
        "outputs": result.outputs,
        "results": [asdict(r) for r in result.results],
        "inputs": g.inputs,
        "environment": fingerprint(),
    }


def gate(settings: Settings, variant: str) -> StageResult:
    """Parity with the variant's tolerance, then the task metric; writes the report, then decides."""
    g = plan_gate(settings, variant)
    if skipped := up_to_date(g.manifest, g.key, g.inputs, g.stage_settings, settings, STAGE, (), label=f"{variant} gate: ", gate=True):
        return skipped
    _require_device(g, settings.model)

    start = time.perf_counter()
    result = measure_variant(g, settings)
    report = gate_report(g, result)
    files.write_json(g.report_json, report)
    files.write_text(g.layout.reports / f"variant-{variant}.md", render_markdown(report))
    seconds = time.perf_counter() - start
    if not result.passed:
        g.manifest.forget(g.key)
        raise ParityError(STAGE, *_refusal(g.spec, variant, report, g.report_json.relative_to(g.layout.root)))
    details = {
        "passed": True,
        "worst": asdict(result.worst),
        "task_metric": result.task,
        "device": g.device,
        "bytes": g.rec.bytes,
        "size_vs_fp32": g.rec.bytes / g.onnx_rec.bytes,
    }
    g.manifest.record(g.key, g.report_json, STAGE, g.inputs, g.stage_settings, seconds, details)
    return StageResult(STAGE, False, (g.report_json,), seconds, _gate_summary(variant, result), details)


def _gate_summary(variant: str, result: GateResult) -> str:
    worst, task = result.worst, result.task
    summary = f"{variant} gate passed: {len(result.results)} comparisons; worst '{worst.output}' max abs {worst.max_abs:.2g}"
    if task is not None:
        summary += f"; {task['name']} {task[variant]:.4g} vs fp32 {task['fp32']:.4g}"
    return summary


def _refusal(spec: ModelSpec, variant: str, report: dict, where: Path) -> tuple[str, str]:
    """(problem, fix) for a variant that failed a gate."""
    tol = report["tolerance"]
    problems = []
    for name, out in report["outputs"].items():
        if not out["passed"]:
            problems.append(
                f"parity: {out['beyond']:.2%} of output '{name}' ({out['elements']} elements over every case) is beyond "
                f"atol {tol['atol']:g} + rtol {tol['rtol']:g}·|want| + scaled {tol['scaled']:g}·scale (allowed {tol['max_mismatch']:.2%}; max abs error {out['max_abs']:.3g})"
            )
    task = report["task_metric"]
    if task is not None and not task["passed"]:
        problems.append(
            f"{task['name']}: {task[variant]:.4g} against fp32's {task['fp32']:.4g}, {task['drop']:.4g} worse (allowed {task['max_drop']:g})"
        )
    problem = f"{spec.name}: the {variant} variant is refused; " + "; ".join(problems) + f". Report: {where}"
    fix = (
        f"the fp32 archive is untouched. Serve it, or if this loss is acceptable for {spec.name}, "
        f"widen {variant}_tolerance or task_metric.max_drop in the model's spec"
    )
    return problem, fix


def render_markdown(report: dict) -> str:
    tol = report["tolerance"]
    verdict = "PASS" if report["passed"] else "FAIL"
    build = report["build"]
    lines = [
        f"# Variant {report['variant']}: {report['model']} — {verdict}",
        "",
        f"Method: **{build['method']}**; {build['why']}. Size: {build['bytes']:,} bytes, {build['size_vs_fp32']:.2f}× fp32.",
        "",
        f"**Gate 1, parity** ({'pass' if report['parity_passed'] else 'FAIL'}): {report['engine']} against eager fp32. An element passes "
        f"when |got − want| ≤ atol {tol['atol']:g} + rtol {tol['rtol']:g}·|want| + scaled {tol['scaled']:g}·scale; each output may have at most "
        f"{tol['max_mismatch']:.2%} of its elements, over every case, beyond that.",
        "",
        "| output | elements | beyond bound | max abs | result |",
        "| --- | ---: | ---: | ---: | --- |",
    ]
    for name, out in report["outputs"].items():
        lines.append(
            f"| {name} | {out['elements']:,} | {out['beyond']:.2%} | {out['max_abs']:.3g} | {'✓' if out['passed'] else '✗ FAIL'} |"
        )
    lines.append("")
    task = report["task_metric"]
    if task is None:
        lines += ["**Gate 2, task metric**: the spec declares none, so only parity decides.", ""]
    else:
        better = "higher" if task["higher_is_better"] else "lower"
        lines += [
            f"**Gate 2, {task['name']}** ({'pass' if task['passed'] else 'FAIL'}; {better} is better): fp32 ONNX Runtime "
            f"{task['fp32']:.5g}, {report['variant']} {task[report['variant']]:.5g}: {task['drop']:.4g} worse, "
            f"allowed {task['max_drop']:g}.",
            "",
        ]
    lines += [
        "The error distribution per case (absolute error against eager fp32):",
        "",
        "| case | batch | output | p50 abs | p99 abs | max abs | beyond bound |",
        "| --- | ---: | --- | ---: | ---: | ---: | ---: |",
    ]
    for r in report["results"]:
        lines.append(
            f"| {r['case']} | {r['batch_size']} | {r['output']} | {r['p50_abs']:.3g} | {r['p99_abs']:.3g} | {r['max_abs']:.3g} | {r['beyond']:.2%} |"
        )
    return "\n".join(lines) + "\n"


def gate_passed(manifest: Manifest, variant: str) -> bool:
    """Whether the variant's gate passed for its current file, made from the current fp32 model."""
    gate, rec, fp32 = manifest.records.get(gate_key(variant)), manifest.records.get(variant), manifest.records.get(ONNX)
    return bool(
        gate
        and rec
        and fp32
        and gate.details.get("passed")
        and gate.inputs.get(variant) == rec.sha256
        and gate.inputs.get(ONNX) == fp32.sha256
    )


def package_variant(settings: Settings, variant: str) -> StageResult:
    """model_store/<model>-<variant>.mar, only from a variant whose gate passed for exactly this file."""
    spec, layout = resolve(settings)
    manifest = Manifest(layout.root, spec.name, settings.model)
    path, rec = manifest.verified(variant, STAGE)
    if not gate_passed(manifest, variant):
        raise PipelineError(
            STAGE,
            f"{spec.name}: the {variant} gate has not passed for the current {rec.path}",
            f"run it: python -m pipeline variants --model {settings.model} --{variant}",
        )
    _, gate_rec = manifest.verified(gate_key(variant), STAGE)
    io_contract = {
        **package.archive_contract(settings, spec),
        "model": layout.served_name(variant),
        "variant": variant,
        "device": DEVICE[variant],
    }
    inputs = {variant: rec.sha256, "gate": gate_rec.sha256}
    return package.archive(settings, layout, manifest, archive_key(variant), path, rec.sha256, io_contract, inputs)


def run(settings: Settings, variants: tuple[str, ...]) -> Iterator[StageResult]:
    """Build, gate and package each variant in turn, yielding each step; the first refusal raises."""
    unknown = [v for v in variants if v not in VARIANTS]
    if unknown:
        raise PipelineError(STAGE, f"unknown variant(s) {unknown}", f"choose from {', '.join(VARIANTS)}")
    spec = resolve(settings)[0]
    for variant in variants:
        tolerance_of(spec, variant)  # a missing declaration fails before any work
    for variant in variants:
        yield build(settings, variant)
        yield gate(settings, variant)
        yield package_variant(settings, variant)
