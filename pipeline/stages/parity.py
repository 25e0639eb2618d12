"""Stage 4: prove TorchScript and ONNX Runtime compute what eager PyTorch computes.

Every engine runs the same seeded inputs at several batch sizes plus edge values;
every output is compared with eager. The report is written first, then the gate
decides, naming the worst output when anything is beyond tolerance.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass

import numpy as np
import torch

from pipeline.artifacts import checkpoint, files
from pipeline.artifacts.environment import fingerprint
from pipeline.artifacts.manifest import Manifest
from pipeline.artifacts.names import CHECKPOINT, ONNX, PARITY, TORCHSCRIPT
from pipeline.errors import ParityError
from pipeline.runtimes.runners import OrtRunner, Runner, TorchRunner, cuda_available
from pipeline.runtimes.session import SessionConfig
from pipeline.settings import Settings, StageResult, cuda_precision, cuda_tolerance, resolve, tolerance
from pipeline.spec import ModelSpec, Tolerance
from pipeline.stages.capture import capture_mode

STAGE = "parity"
REFERENCE = "eager"


@dataclass(frozen=True)
class OutputDiff:
    """One engine's output against eager for one case: the worst element and the spread."""

    engine: str
    case: str
    batch_size: int
    output: str
    max_abs: float
    max_rel: float
    mean_abs: float
    # max over elements of |got - want| / (atol + rtol*|want|); <= 1 passes.
    tolerance_used: float
    passed: bool
    # The distribution, not only the worst element: the median and 99th percentile
    # absolute error, and the fraction of elements beyond the bound.
    p50_abs: float = 0.0
    p99_abs: float = 0.0
    beyond: float = 0.0
    elements: int = 0


def compare(engine: str, case: str, output: str, want: np.ndarray, got: np.ndarray, tol: Tolerance) -> OutputDiff:
    """Pass when at most `tol.max_mismatch` of the elements (none, by default) are beyond the bound."""
    if want.shape != got.shape:
        inf = float("inf")
        return OutputDiff(engine, case, len(want), output, inf, inf, inf, inf, False, inf, inf, 1.0, int(want.size))
    want64 = want.astype(np.float64)
    got64 = got.astype(np.float64)
    # NaN where eager has NaN is agreement; NaN anywhere else is a failure.
    same_nan = np.isnan(want64) & np.isnan(got64)
    with np.errstate(invalid="ignore", over="ignore"):
        err = np.where(same_nan | (want64 == got64), 0.0, np.abs(want64 - got64))
    err = np.where(np.isnan(err), np.inf, err)
    bound = tol.atol + tol.rtol * np.abs(np.where(np.isfinite(want64), want64, 0.0))
    ratio = err / bound
    rel = err / np.maximum(np.abs(want64), np.finfo(np.float32).tiny)
    beyond = float(np.mean(ratio > 1.0)) if ratio.size else 0.0
    p50, p99 = (float(v) for v in np.percentile(err, (50, 99))) if err.size else (0.0, 0.0)
    return OutputDiff(
        engine=engine,
        case=case,
        batch_size=int(want.shape[0]),
        output=output,
        max_abs=float(err.max(initial=0.0)),
        max_rel=float(rel.max(initial=0.0)),
        mean_abs=float(err.mean()) if err.size else 0.0,
        tolerance_used=float(ratio.max(initial=0.0)),
        passed=beyond <= tol.max_mismatch,
        p50_abs=p50,
        p99_abs=p99,
        beyond=beyond,
        elements=int(err.size),
    )


def cases(spec: ModelSpec, batch_sizes: tuple[int, ...], seed: int) -> list[tuple[str, dict[str, np.ndarray]]]:
    """Seeded random inputs at each batch size, the edge values, and the spec's own cases."""
    out = []
    for b in batch_sizes:
        out.append((f"random b={b}", spec.sample_inputs(b, np.random.default_rng(seed * 1000 + b))))
    if spec.edge_inputs is not None:
        out.append(("edge values", spec.edge_inputs()))
    if spec.parity_cases is not None:
        out.extend(spec.parity_cases(np.random.default_rng(seed)).items())
    return [(name, spec.check_feed(feed, f"parity case {name!r}", STAGE)) for name, feed in out]


def engines(spec: ModelSpec, manifest: Manifest, precision: str = "fp32") -> tuple[list[Runner], list[dict]]:
    """The engines to compare with eager, and the ones skipped here with the reason.

    ONNX Runtime on CUDA gets exactly the session the handler serves with: the same
    factory, the same provider options, the declared precision.
    """
    ts_path, _ = manifest.verified(TORCHSCRIPT, STAGE)
    onnx_path, _ = manifest.verified(ONNX, STAGE)
    runners: list[Runner] = [
        TorchRunner("torchscript", torch.jit.load(str(ts_path)), spec),
        OrtRunner("onnxruntime-cpu", onnx_path, spec, SessionConfig("cpu")),
    ]
    skipped = []
    if cuda_available():
        runners.append(OrtRunner("onnxruntime-cuda", onnx_path, spec, SessionConfig("cuda", precision=precision)))  # type: ignore[arg-type]
    else:
        skipped.append({"engine": "onnxruntime-cuda", "reason": "no CUDA device on this machine"})
    return runners, skipped


def render_markdown(report: dict) -> str:
    tol = report["tolerance"]
    verdict = "PASS" if report["passed"] else "FAIL"
    cuda_tol = report.get("cuda_tolerance", tol)
    lines = [
        f"# Parity: {report['model']} — {verdict}",
        "",
        f"Reference: eager PyTorch on the CPU. Rule: |got − want| ≤ atol + rtol·|want| with "
        f"atol {tol['atol']:g}, rtol {tol['rtol']:g}. *tol used* is the largest error as a fraction "
        f"of that bound (≤ 1 passes).",
        "",
        f"CUDA precision: **{report.get('cuda_precision', 'fp32')}** (what the archive serves with); "
        + (
            "ONNX Runtime's TF32 is off, so CUDA is held to the same bound."
            if report.get("cuda_precision", "fp32") == "fp32"
            else f"onnxruntime-cuda is held to the declared TF32 bound atol {cuda_tol['atol']:g}, rtol {cuda_tol['rtol']:g}."
        ),
        "",
    ]
    if report["worst"]:
        w = report["worst"]
        lines += [
            f"Worst: **{w['engine']}** output `{w['output']}` at {w['case']}: max abs {w['max_abs']:.3g}, "
            f"max rel {w['max_rel']:.3g}, tol used {w['tolerance_used']:.3g}.",
            "",
        ]
    for s in report["skipped_engines"]:
        lines.append(f"Skipped: {s['engine']} ({s['reason']}).")
    lines += [
        "",
        "| engine | case | batch | output | max abs | max rel | mean abs | tol used | result |",
        "| --- | --- | ---: | --- | ---: | ---: | ---: | ---: | --- |",
    ]
    for r in report["results"]:
        mark = "✓" if r["passed"] else "✗ FAIL"
        lines.append(
            f"| {r['engine']} | {r['case']} | {r['batch_size']} | {r['output']} | {r['max_abs']:.3g} | "
            f"{r['max_rel']:.3g} | {r['mean_abs']:.3g} | {r['tolerance_used']:.3g} | {mark} |"
        )
    return "\n".join(lines) + "\n"


def run(settings: Settings) -> StageResult:
    spec, layout = resolve(settings)
    manifest = Manifest(layout.root, spec.name)
    model, ckpt_sha = checkpoint.load_model(manifest, spec, STAGE)
    tol = tolerance(settings, spec)
    precision = cuda_precision(settings, spec)
    cuda_tol = cuda_tolerance(settings, spec)
    inputs = {CHECKPOINT: ckpt_sha}
    for key in (TORCHSCRIPT, ONNX):
        _, rec = manifest.verified(key, STAGE)
        inputs[key] = rec.sha256
    # model_source_sha256: the model file holds the sample, edge and parity-case inputs.
    stage_settings = {
        "atol": tol.atol,
        "rtol": tol.rtol,
        "batch_sizes": list(settings.parity_batch_sizes),
        "model_source_sha256": spec.source_sha256(),
        "seed": settings.seed,
        "cuda": cuda_available(),
        "cuda_precision": precision,
        "cuda_atol": cuda_tol.atol,
        "cuda_rtol": cuda_tol.rtol,
    }
    report_json = layout.reports / "parity.json"
    fresh, why = manifest.is_fresh(PARITY, inputs, stage_settings)
    if fresh and not settings.force and manifest.records[PARITY].details.get("passed"):
        return StageResult(STAGE, True, (report_json,), 0.0, f"up to date ({why})", manifest.records[PARITY].details)

    start = time.perf_counter()
    reference = TorchRunner(REFERENCE, model, spec)
    runners, skipped = engines(spec, manifest, precision)
    results: list[OutputDiff] = []
    for case, feed in cases(spec, settings.parity_batch_sizes, settings.seed):
        # The reference computes what was traced and exported: attention's fused fast path
        # (nested tensors zero padded positions) is off here as it was there.
        with capture_mode():
            want = reference.infer(feed)
        for runner in runners:
            got = runner.infer(feed)
            for t in spec.outputs:
                bound = cuda_tol if runner.name == "onnxruntime-cuda" else tol
                results.append(compare(runner.name, case, t.name, want[t.name], got[t.name], bound))
    worst = max(results, key=lambda r: r.tolerance_used)
    passed = all(r.passed for r in results)
    failed = [r for r in results if not r.passed]
    report = {
        "model": spec.name,
        "passed": passed,
        "reference": "eager (cpu)",
        "engines": [r.name for r in runners],
        "skipped_engines": skipped,
        "tolerance": asdict(tol),
        "cuda_precision": precision,
        "cuda_tolerance": asdict(cuda_tol),
        "worst": asdict(worst),
        "failures": len(failed),
        "results": [asdict(r) for r in results],
        "inputs": inputs,
        "environment": fingerprint(),
    }
    # The report is written before the gate decides, so a failure can be read.
    files.write_json(report_json, report)
    files.write_text(layout.reports / "parity.md", render_markdown(report))
    seconds = time.perf_counter() - start
    if not passed:
        # A pass recorded for other settings must not let `package` ship this model.
        manifest.forget(PARITY)
        raise ParityError(
            STAGE,
            f"{spec.name}: {len(failed)} of {len(results)} comparisons beyond tolerance; worst is "
            f"{worst.engine} output '{worst.output}' at {worst.case} (batch {worst.batch_size}): max abs error {worst.max_abs:.3g}, "
            f"max rel {worst.max_rel:.3g} ({worst.tolerance_used:.3g}× the allowed atol {tol.atol:g} + rtol {tol.rtol:g}·|want|). "
            f"Report: {report_json.relative_to(layout.root)}",
            "re-export (python -m pipeline export --force), or if the difference is expected for this "
            "model, set its tolerance in the model's spec or pass --atol/--rtol",
        )
    details = {
        "passed": True,
        "worst": asdict(worst),
        "comparisons": len(results),
        "engines": report["engines"],
        "cuda_precision": precision,
    }
    manifest.record(PARITY, report_json, STAGE, inputs, stage_settings, seconds, details)
    return StageResult(
        STAGE,
        False,
        (report_json, layout.reports / "parity.md"),
        seconds,
        f"{len(results)} comparisons passed; worst {worst.engine} '{worst.output}' {worst.case}: "
        f"max abs {worst.max_abs:.2g} ({worst.tolerance_used:.2g}× tolerance)",
        details,
    )
