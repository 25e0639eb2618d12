"""Stage 4: prove TorchScript and ONNX Runtime compute what eager PyTorch computes.

Every engine runs the same seeded inputs at several batch sizes plus edge values (and,
for a model that takes texts or images, sample texts tokenized and a JPEG decoded by the
servers' own preprocessing); every output is compared with eager. The sweep is sized to the model: batches past
`cost.MIN_SWEEP` run only where eager's measured cost, scaled to that batch, fits a time
and memory budget (`--parity-sweep full` runs them all). Engines run one after
another, each loaded only for its own pass, against eager's outputs kept on disk, so
one engine's memory is in use at a time. The report is written first, then the gate
decides, naming the worst output when anything is beyond tolerance.
"""

from __future__ import annotations

import functools
import gc
import os
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from pipeline.artifacts import checkpoint, cost, files
from pipeline.artifacts.environment import fingerprint
from pipeline.artifacts.manifest import Manifest
from pipeline.artifacts.names import CHECKPOINT, ONNX, PARITY, TORCHSCRIPT, pt2_key
from pipeline.errors import ParityError
from pipeline.runtimes.pt2 import devices as pt2_devices
from pipeline.runtimes.pt2 import packages, verified_package
from pipeline.runtimes.runners import OrtRunner, Pt2Runner, Runner, TorchRunner, cuda_available
from pipeline.runtimes.session import SessionConfig
from pipeline.serving.common import preprocess
from pipeline.serving.common.contract import declare
from pipeline.settings import Layout, Settings, StageResult, cuda_precision, cuda_tolerance, resolve, tolerance
from pipeline.spec import Feed, ModelSpec, Tolerance, tokenizer_file
from pipeline.stages.capture import capture_mode
from pipeline.stages.fresh import up_to_date

STAGE = "parity"
REFERENCE = "eager"
CHUNK = 1 << 22  # elements compared at a time, so a comparison's float64 copies stay small


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
    # max over elements of |got - want| / (atol + rtol*|want| + scaled*scale); <= 1 passes.
    tolerance_used: float
    passed: bool
    # The distribution, not only the worst element: the median and 99th percentile
    # absolute error, and the fraction of elements beyond the bound.
    p50_abs: float = 0.0
    p99_abs: float = 0.0
    beyond: float = 0.0
    elements: int = 0
    # The output's scale in this case (its largest finite |want|), and max_abs over it.
    scale: float = 0.0
    max_scaled: float = 0.0


def _scale(want: np.ndarray) -> float:
    peak = 0.0
    for start in range(0, want.size, CHUNK):
        w = np.abs(np.asarray(want[start : start + CHUNK], dtype=np.float64))
        w = w[np.isfinite(w)]
        peak = max(peak, float(w.max(initial=0.0)))
    return peak


def compare(engine: str, case: str, output: str, want: np.ndarray, got: np.ndarray, tol: Tolerance) -> OutputDiff:
    """Pass when at most `tol.max_mismatch` of the elements (none, by default) are beyond the bound.

    Worked a chunk at a time: GPT-2's logits at batch 64 are 50 M elements, and six
    float64 copies of them at once would be 2.4 GB.
    """
    if want.shape != got.shape:
        inf = float("inf")
        return OutputDiff(engine, case, len(want), output, inf, inf, inf, inf, False, inf, inf, 1.0, int(want.size))
    flat_want, flat_got = want.reshape(-1), got.reshape(-1)
    scale = _scale(flat_want)
    err_all = np.empty(flat_want.size, dtype=np.float32)
    max_abs = max_rel = ratio_max = total = 0.0
    beyond = 0
    for start in range(0, flat_want.size, CHUNK):
        w = np.asarray(flat_want[start : start + CHUNK], dtype=np.float64)
        g = np.asarray(flat_got[start : start + CHUNK], dtype=np.float64)
        # NaN where eager has NaN is agreement; NaN anywhere else is a failure.
        with np.errstate(invalid="ignore", over="ignore"):
            err = np.where((np.isnan(w) & np.isnan(g)) | (w == g), 0.0, np.abs(w - g))
        err = np.where(np.isnan(err), np.inf, err)
        bound = tol.atol + tol.rtol * np.abs(np.where(np.isfinite(w), w, 0.0)) + tol.scaled * scale
        ratio = err / bound
        err_all[start : start + CHUNK] = err
        max_abs = max(max_abs, float(err.max(initial=0.0)))
        max_rel = max(max_rel, float((err / np.maximum(np.abs(w), np.finfo(np.float32).tiny)).max(initial=0.0)))
        ratio_max = max(ratio_max, float(ratio.max(initial=0.0)))
        total += float(err.sum())
        beyond += int(np.count_nonzero(ratio > 1.0))
    n = flat_want.size
    p50, p99 = (float(v) for v in np.percentile(err_all, (50, 99))) if n else (0.0, 0.0)
    share = beyond / n if n else 0.0
    return OutputDiff(
        engine=engine,
        case=case,
        batch_size=int(want.shape[0]),
        output=output,
        max_abs=max_abs,
        max_rel=max_rel,
        mean_abs=total / n if n else 0.0,
        tolerance_used=ratio_max,
        passed=share <= tol.max_mismatch,
        p50_abs=p50,
        p99_abs=p99,
        beyond=share,
        elements=int(n),
        scale=scale,
        max_scaled=max_abs / scale if scale else (0.0 if max_abs == 0 else float("inf")),
    )


@dataclass(frozen=True)
class Case:
    """One parity input: a random batch (`batch` set) or an edge or spec case, made when it runs."""

    name: str
    batch: int | None
    make: Callable[[], Feed]


def _random_feed(spec: ModelSpec, batch: int, seed: int) -> Feed:
    return spec.sample_inputs(batch, np.random.default_rng(seed * 1000 + batch))


def real_input_cases(spec: ModelSpec, seed: int) -> dict[str, Feed]:
    """Sample texts tokenized, or a JPEG decoded, by the servers' own code (`pipeline.serving.common.preprocess`)."""
    if spec.text_input is None and spec.image_input is None:
        return {}
    tokenizer = tokenizer_file(spec).read_bytes() if spec.text_input is not None else None
    return preprocess.sample_feeds(declare(spec), tokenizer, np.random.default_rng(seed))


def planned(spec: ModelSpec, batch_sizes: tuple[int, ...], seed: int) -> list[Case]:
    """The cheap random batches, then the edge values and the spec's own cases, then the large batches.

    The cases a budget may drop come last, so what it spends goes to the required ones first.
    """
    random = [Case(f"random b={b}", b, functools.partial(_random_feed, spec, b, seed)) for b in sorted(set(batch_sizes))]
    declared: list[Case] = []
    if spec.edge_inputs is not None:
        declared.append(Case("edge values", None, spec.edge_inputs))
    if spec.parity_cases is not None:
        for name, feed in spec.parity_cases(np.random.default_rng(seed)).items():
            declared.append(Case(name, None, functools.partial(dict, feed)))
    for name, feed in real_input_cases(spec, seed).items():
        declared.append(Case(name, None, functools.partial(dict, feed)))
    small = [c for c in random if c.batch is not None and c.batch <= cost.MIN_SWEEP]
    return small + declared + [c for c in random if c.batch is not None and c.batch > cost.MIN_SWEEP]


def cases(spec: ModelSpec, batch_sizes: tuple[int, ...], seed: int) -> Iterator[tuple[str, Feed]]:
    """Each case's name and checked feed, made one at a time."""
    for case in planned(spec, batch_sizes, seed):
        yield case.name, spec.check_feed(case.make(), f"parity case {case.name!r}", STAGE)


def why_not(sizing: cost.Sizing, case: Case, measured: dict[int, cost.Cost], runs: int, spent_s: float) -> str | None:
    """None when `case` fits the sweep's budget; otherwise the reason, from the largest random batch eager ran so far."""
    if case.batch is None or sizing.always(case.batch) or not measured:
        return None
    known = max(measured)
    basis = f"eager took {measured[known].seconds:.2g} s and {measured[known].extra_mb:.0f} MiB at batch {known}"
    return sizing.over_memory(cost.scaled(measured[known].extra_mb, known, case.batch), basis) or sizing.over_time(
        cost.scaled(measured[known].seconds, known, case.batch) * runs, sizing.seconds - spent_s, f"{runs} engines; {basis}"
    )


@dataclass
class Sweep:
    """What the sweep ran, what it left out and why, and what each run cost."""

    mode: str
    asked: list[int]
    budget: dict
    ran: list[str] = field(default_factory=list)
    skipped: list[dict] = field(default_factory=list)
    costs: list[dict] = field(default_factory=list)

    def ran_batch_sizes(self) -> list[int]:
        return [int(name.removeprefix("random b=")) for name in self.ran if name.startswith("random b=")]


def engines(spec: ModelSpec, manifest: Manifest, precision: str = "fp32") -> tuple[list[tuple[str, Callable[[], Runner]]], list[dict]]:
    """The engines to compare with eager, each as a name and what loads it, and the ones skipped here with the reason.

    ONNX Runtime on CUDA gets exactly the session the handler serves with: the same
    factory, the same provider options, the declared precision.
    """
    ts_path, ts = manifest.verified(TORCHSCRIPT, STAGE)
    onnx_path, _ = manifest.verified(ONNX, STAGE)
    loaders: list[tuple[str, Callable[[], Runner]]] = [
        ("onnxruntime-cpu", lambda: OrtRunner("onnxruntime-cpu", onnx_path, spec, SessionConfig("cpu"))),
    ]
    skipped = []
    if ts.not_made:  # the trace stage said why; the archive serves the ONNX graph
        skipped.append({"engine": "torchscript", "reason": f"not made: {ts.not_made}"})
    else:
        loaders.insert(0, ("torchscript", lambda: TorchRunner("torchscript", torch.jit.load(str(ts_path)), spec)))
    if cuda_available():
        config = SessionConfig("cuda", precision=precision)  # type: ignore[arg-type]
        loaders.append(("onnxruntime-cuda", lambda: OrtRunner("onnxruntime-cuda", onnx_path, spec, config)))
    else:
        skipped.append({"engine": "onnxruntime-cuda", "reason": "no CUDA device on this machine"})
    for device in pt2_devices():
        engine, made = f"aotinductor-{device}", packages(manifest).get(device)
        if made is None:
            skipped.append({"engine": engine, "reason": pt2_absent(manifest, device)})
            continue
        loaders.append((engine, functools.partial(load_package, manifest, spec, device)))
    return loaders, skipped


def load_package(manifest: Manifest, spec: ModelSpec, device: str) -> Runner:
    """The AOTInductor package for `device` as parity's runner, once its hash and its machine are checked."""
    return Pt2Runner(f"aotinductor-{device}", verified_package(manifest, device, STAGE), spec, device)


def pt2_absent(manifest: Manifest, device: str) -> str:
    """Why there is no package for `device` to check: its stage said, or it has not run."""
    rec = manifest.records.get(pt2_key(device))
    if rec is None:
        return f"not made: the pt2 stage has not run (python -m pipeline pt2 --model {manifest.command})"
    return f"not made: {rec.not_made}"


class Outputs:
    """Each case's feed and eager's outputs, kept on disk between the engines' passes."""

    def __init__(self, folder: Path):
        self.folder = folder

    def _path(self, case: int, kind: str, name: str) -> Path:
        return self.folder / f"{case}-{kind}-{name}.npy"

    def put(self, case: int, feed: Feed, want: Feed) -> None:
        for kind, arrays in (("in", feed), ("out", want)):
            for name, value in arrays.items():
                np.save(self._path(case, kind, name), value)

    def feed(self, case: int, spec: ModelSpec) -> Feed:
        return {t.name: np.load(self._path(case, "in", t.name)) for t in spec.inputs}

    def want(self, case: int, name: str) -> np.ndarray:
        return np.load(self._path(case, "out", name), mmap_mode="r")


@dataclass
class Evidence:
    """Per output, whether the comparisons could have failed: does it vary, how large is it."""

    varies: dict[str, bool] = field(default_factory=dict)
    peak: dict[str, float] = field(default_factory=dict)

    def add(self, want: Feed) -> None:
        for name, value in want.items():
            rows = value.reshape(len(value), -1) if value.ndim else value.reshape(1, 1)
            differ = len(rows) > 1 and bool(np.any(rows != rows[:1]))
            self.varies[name] = self.varies.get(name, False) or differ
            self.peak[name] = max(self.peak.get(name, 0.0), _scale(value.reshape(-1)))

    def vacuous(self, tol: Tolerance) -> list[dict]:
        """The outputs whose comparisons prove nothing, and why."""
        out = []
        for name, varies in self.varies.items():
            if not varies:
                why = "it is the same for every input (every row of every case is identical), so any engine that answers a constant passes"
            elif self.peak[name] <= tol.atol:
                why = f"its largest |value| is {self.peak[name]:.2g}, within atol {tol.atol:g}, so an engine answering zeros would pass"
            else:
                continue
            out.append({"output": name, "why": why})
        return out


def reference_pass(
    model, spec: ModelSpec, planned_cases: list[Case], store: Outputs, sweep: Sweep, sizing: cost.Sizing, runs: int, bar
) -> tuple[list[Case], Evidence]:
    """Eager on every case that fits the budget: its outputs stored, its cost measured."""
    reference = TorchRunner(REFERENCE, model, spec)
    ran: list[Case] = []
    measured: dict[int, cost.Cost] = {}
    spent = 0.0
    evidence = Evidence()
    for case in planned_cases:
        why = why_not(sizing, case, measured, runs, spent)
        if why is not None:
            sweep.skipped.append({"case": case.name, "batch": case.batch, "why": why})
            bar.total -= runs
            bar.refresh()
            continue
        with cost.measure() as c, capture_mode():
            # The reference computes what was traced and exported: attention's fused fast
            # path (nested tensors zero padded positions) is off here as it was there.
            feed = spec.check_feed(case.make(), f"parity case {case.name!r}", STAGE)
            want = reference.infer(feed)
        store.put(len(ran), feed, want)
        evidence.add(want)
        # The arrays themselves are the least a case takes, below what RSS can resolve.
        c.extra_mb = max(c.extra_mb, sum(a.nbytes for a in (*feed.values(), *want.values())) / cost.MB)
        del feed, want
        if case.batch is not None:
            measured[case.batch] = c
        spent += c.seconds * runs
        ran.append(case)
        sweep.ran.append(case.name)
        sweep.costs.append({"engine": REFERENCE, "case": case.name, "seconds": round(c.seconds, 4), "extra_mb": round(c.extra_mb, 1)})
        bar.update(1)
    return ran, evidence


def engine_pass(runner: Runner, spec: ModelSpec, ran: list[Case], store: Outputs, tol: Tolerance, sweep: Sweep, bar) -> list[OutputDiff]:
    """One engine over every case eager ran, compared output by output."""
    results = []
    for i, case in enumerate(ran):
        feed = store.feed(i, spec)
        with cost.measure() as c:
            got = runner.infer(feed)
        del feed
        sweep.costs.append({"engine": runner.name, "case": case.name, "seconds": round(c.seconds, 4), "extra_mb": round(c.extra_mb, 1)})
        for t in spec.outputs:
            results.append(compare(runner.name, case.name, t.name, store.want(i, t.name), got[t.name], tol))
        del got
        bar.update(1)
    return results


def render_markdown(report: dict) -> str:
    """parity.md: the rule and the sweep, what the results prove, every comparison, then what each engine cost."""
    lines = [
        f"# Parity: {report['model']} — {'PASS' if report['passed'] else 'FAIL'}",
        *_md_rule(report),
        *_md_sweep(report["sweep"]),
        *_md_findings(report),
        *_md_results(report["results"]),
        *_md_greedy(report.get("greedy", [])),
        *_md_costs(report["sweep"]["costs"]),
    ]
    return "\n".join(lines) + "\n"


def _md_rule(report: dict) -> list[str]:
    tol = report["tolerance"]
    cuda_tol = report.get("cuda_tolerance", tol)
    return [
        "",
        f"Reference: eager PyTorch on the CPU. Rule: |got − want| ≤ atol + rtol·|want| + scaled·scale with "
        f"atol {tol['atol']:g}, rtol {tol['rtol']:g}, scaled {tol['scaled']:g}; *scale* is the output's largest |want| "
        f"in that case. *max abs* is the raw error, *max abs / scale* the same relative to the output's scale, and "
        f"*tol used* the largest error as a fraction of the bound (≤ 1 passes).",
        "",
        f"CUDA precision: **{report.get('cuda_precision', 'fp32')}** (what the archive serves with); "
        + (
            "ONNX Runtime's TF32 is off, so CUDA is held to the same bound."
            if report.get("cuda_precision", "fp32") == "fp32"
            else f"onnxruntime-cuda is held to the declared TF32 bound atol {cuda_tol['atol']:g}, rtol {cuda_tol['rtol']:g}."
        ),
    ]


def _md_sweep(sweep: dict) -> list[str]:
    return [
        "",
        f"Sweep: **{sweep['mode']}**; batch sizes asked {sweep['asked']}, ran {sweep['ran_batch_sizes']}"
        + (
            f" (budget {sweep['budget']['seconds']:g} s for every engine, {sweep['budget']['memory_mb']:g} MiB for one case)."
            if sweep["mode"] == "sized"
            else " (every batch asked for, whatever it costs)."
        ),
        *(f"- left out {s['case']}: {s['why']}" for s in sweep["skipped"]),
    ]


def _md_findings(report: dict) -> list[str]:
    """The outputs that prove nothing, the worst comparison, and the engines that did not run."""
    lines = [""]
    for v in report["vacuous"]:
        lines += [f"**Proves nothing:** output `{v['output']}`: {v['why']}.", ""]
    if report["worst"]:
        w = report["worst"]
        lines += [
            f"Worst: **{w['engine']}** output `{w['output']}` at {w['case']}: max abs {w['max_abs']:.3g} "
            f"({w['max_scaled']:.3g} of its scale {w['scale']:.3g}), tol used {w['tolerance_used']:.3g}.",
            "",
        ]
    return lines + [f"Skipped: {s['engine']} ({s['reason']})." for s in report["skipped_engines"]]


def _md_results(results: list[dict]) -> list[str]:
    return [
        "",
        "| engine | case | batch | output | scale | max abs | max abs / scale | max rel | tol used | result |",
        "| --- | --- | ---: | --- | ---: | ---: | ---: | ---: | ---: | --- |",
        *(
            f"| {r['engine']} | {r['case']} | {r['batch_size']} | {r['output']} | {r['scale']:.3g} | {r['max_abs']:.3g} | "
            f"{r['max_scaled']:.3g} | {r['max_rel']:.3g} | {r['tolerance_used']:.3g} | {'✓' if r['passed'] else '✗ FAIL'} |"
            for r in results
        ),
    ]


def _md_greedy(rows: list[dict]) -> list[str]:
    if not rows:
        return []
    lines = [
        "",
        "Greedy generation: the loop on each engine against transformers' `generate(do_sample=False)`, row by row; "
        "where the tokens part, eager's margin between its two best logits at that step (a near tie is within twice the bound).",
        "",
        "| engine | case | row | new tokens | result |",
        "| --- | --- | ---: | ---: | --- |",
    ]
    for r in rows:
        if r["same"]:
            result = "✓ same tokens"
        else:
            what = "near tie" if r["near_tie"] else "✗ FAIL"
            result = f"{what}: parted at token {r['parted_at']}, margin {r['margin']:.3g} (bound {r['bound']:.3g})"
        lines.append(f"| {r['engine']} | {r['case']} | {r['row']} | {r['tokens']} | {result} |")
    return lines


def _md_costs(costs: list[dict]) -> list[str]:
    lines = ["", "| engine | seconds | largest rise in memory (MiB) |", "| --- | ---: | ---: |"]
    for engine in dict.fromkeys(c["engine"] for c in costs):
        mine = [c for c in costs if c["engine"] == engine]
        lines.append(f"| {engine} | {sum(c['seconds'] for c in mine):.2f} | {max(c['extra_mb'] for c in mine):.0f} |")
    return lines


def sweep_settings(settings: Settings) -> tuple[cost.Sizing, dict]:
    """The budget the sweep runs under, and how it is recorded (a change re-runs parity)."""
    full = settings.parity_sweep == "full"
    sizing = cost.Sizing(settings.parity_budget_s, settings.parity_budget_mb, full)
    recorded = {"mode": settings.parity_sweep} if full else {"mode": "sized", "seconds": sizing.seconds, "memory_mb": sizing.memory_mb}
    return sizing, recorded


@dataclass
class Plan:
    """What one parity run compares, under which bounds, and what its record depends on."""

    spec: ModelSpec
    layout: Layout
    manifest: Manifest
    checkpoint_sha256: str
    tol: Tolerance
    cuda_tol: Tolerance
    precision: str
    sizing: cost.Sizing
    sweep: Sweep
    inputs: dict[str, str]
    stage_settings: dict[str, Any]

    @property
    def report_json(self) -> Path:
        return self.layout.reports / "parity.json"


def plan(settings: Settings) -> Plan:
    spec, layout = resolve(settings)
    manifest = Manifest(layout.root, spec.name, settings.model)
    ckpt_sha = manifest.verified(CHECKPOINT, STAGE)[1].sha256
    tol, cuda_tol, precision = tolerance(settings, spec), cuda_tolerance(settings, spec), cuda_precision(settings, spec)
    sizing, budget_record = sweep_settings(settings)
    # Every package made is checked, so its hash is an input: a rebuilt package re-runs parity.
    made = [pt2_key(device) for device in packages(manifest)]
    inputs = {CHECKPOINT: ckpt_sha, **{key: manifest.verified(key, STAGE)[1].sha256 for key in (TORCHSCRIPT, ONNX, *made)}}
    # model_source_sha256: the model file holds the sample, edge and parity-case inputs.
    stage_settings = {
        "atol": tol.atol,
        "rtol": tol.rtol,
        "scaled": tol.scaled,
        "batch_sizes": list(settings.parity_batch_sizes),
        "sweep": budget_record,
        "model_source_sha256": spec.source_sha256(),
        # The text and image cases are made by the archive's preprocessing: a new tokenizer.json
        # (its sha256 is in the section) or image settings re-run parity.
        "preprocessing": {k: v for k, v in declare(spec).items() if k in ("text_input", "image_input")},
        "seed": settings.seed,
        "cuda": cuda_available(),
        "cuda_precision": precision,
        "cuda_atol": cuda_tol.atol,
        "cuda_rtol": cuda_tol.rtol,
    }
    if spec.generation is not None:
        from pipeline.generation import verify

        stage_settings["generation"] = {"steps": verify.STEPS, "greedy_tokens": verify.GREEDY_TOKENS, "prompts": list(verify.PROMPTS)}
    sweep = Sweep(budget_record["mode"], sorted(set(settings.parity_batch_sizes)), budget_record)
    return Plan(spec, layout, manifest, ckpt_sha, tol, cuda_tol, precision, sizing, sweep, inputs, stage_settings)


@dataclass
class Comparison:
    """Every engine's outputs against eager's, case by case (`compare_engines`)."""

    engines: list[str]
    skipped_engines: list[dict]
    results: list[OutputDiff]
    evidence: Evidence
    # A generation model's greedy tokens on each engine against transformers' generate, row by row.
    greedy: list[dict] = field(default_factory=list)


def compare_engines(p: Plan, settings: Settings) -> Comparison:
    """Run eager on every case the budget allows, then each engine on the same cases, one engine loaded at a time."""
    model, _ = checkpoint.load_model(p.manifest, p.spec, STAGE)
    loaders, skipped = engines(p.spec, p.manifest, p.precision)
    todo = planned(p.spec, settings.parity_batch_sizes, settings.seed)
    runs = 1 + len(loaders)
    results: list[OutputDiff] = []
    p.layout.artifacts.mkdir(parents=True, exist_ok=True)
    # Beside the artifacts (a private name the next run sweeps if this one is killed), not
    # in /tmp, which may be memory.
    with (
        tempfile.TemporaryDirectory(prefix=f".parity-{os.getpid()}.", dir=p.layout.artifacts) as tmp,
        tqdm(total=len(todo) * runs, desc=f"parity {p.spec.name}", unit="run", disable=None, leave=False) as bar,
    ):
        store = Outputs(Path(tmp))
        ran, evidence = reference_pass(model, p.spec, todo, store, p.sweep, p.sizing, runs, bar)
        generation = GenerationCheck.of(p.spec, model)  # eager's generation, before the model goes
        del model
        gc.collect()
        greedy: list[dict] = []
        for name, load in loaders:
            bar.set_postfix_str(name)
            runner = load()
            bound = p.cuda_tol if name == "onnxruntime-cuda" else p.tol
            results.extend(engine_pass(runner, p.spec, ran, store, bound, p.sweep, bar))
            if generation is not None and isinstance(runner, OrtRunner):
                steps, rows = generation.check(runner, bound)
                results.extend(steps)
                greedy.extend(rows)
            del runner  # released before the next engine loads
            gc.collect()
    return Comparison([name for name, _ in loaders], skipped, results, evidence, greedy)


@dataclass
class GenerationCheck:
    """A generation model's parity beyond its graph's outputs (`pipeline.generation.verify`): eager's
    prefill, decode steps and greedy tokens, made once, then held against each ONNX Runtime engine
    in the session its pass already opened."""

    gen: Any
    tokenizer: Any
    references: list

    @classmethod
    def of(cls, spec: ModelSpec, model: torch.nn.Module) -> GenerationCheck | None:
        if spec.generation is None:
            return None
        # transformers' generate is the reference: imported for a generation model only.
        from pipeline.generation import text as generation_text
        from pipeline.generation import verify

        tokenizer = generation_text.load(spec.generation.tokenizer)
        cases = verify.cases(tokenizer, spec.generation, verify.GREEDY_TOKENS)
        return cls(spec.generation, tokenizer, [verify.reference(model, spec.generation, rows, case) for case, rows in cases.items()])

    def check(self, runner: OrtRunner, bound: Tolerance) -> tuple[list[OutputDiff], list[dict]]:
        """Each case's step logits against eager's, and the loop's greedy tokens against transformers', on `runner`'s session."""
        from pipeline.generation import verify
        from pipeline.generation.engines import OnnxEngine

        engine = OnnxEngine(None, self.gen, runner.config, session=runner.session)
        steps, rows = [], []
        for ref in self.references:
            steps += [
                compare(runner.name, step.case, "logits", step.want, step.got, bound) for step in verify.step_logits(engine, self.gen, ref)
            ]
            rows += [row.to_json() for row in verify.greedy_rows(engine, self.gen, self.tokenizer, ref, bound)]
        return steps, rows


@dataclass(frozen=True)
class Verdict:
    """What the comparison proves: whether every output is within its bound, the worst one, and what proves nothing."""

    passed: bool
    worst: OutputDiff
    failed: list[OutputDiff]
    vacuous: list[dict]
    # Greedy rows whose tokens parted from transformers' generate where no near tie explains it.
    parted: list[dict] = field(default_factory=list)
    greedy: list[dict] = field(default_factory=list)


def judge(comparison: Comparison, tol: Tolerance) -> Verdict:
    results = comparison.results
    failed = [r for r in results if not r.passed]
    parted = [g for g in comparison.greedy if not g["passed"]]
    worst = max(results, key=lambda r: r.tolerance_used)
    return Verdict(not failed and not parted, worst, failed, comparison.evidence.vacuous(tol), parted, comparison.greedy)


def report(p: Plan, comparison: Comparison, verdict: Verdict) -> dict:
    """parity.json: the comparison and the verdict, with the bounds and inputs they were made under."""
    return {
        "model": p.spec.name,
        "passed": verdict.passed,
        "reference": "eager (cpu)",
        "engines": comparison.engines,
        "skipped_engines": comparison.skipped_engines,
        "tolerance": asdict(p.tol),
        "cuda_precision": p.precision,
        "cuda_tolerance": asdict(p.cuda_tol),
        "sweep": {**asdict(p.sweep), "ran_batch_sizes": p.sweep.ran_batch_sizes()},
        "vacuous": verdict.vacuous,
        "worst": asdict(verdict.worst),
        "failures": len(verdict.failed),
        "results": [asdict(r) for r in comparison.results],
        "greedy": comparison.greedy,
        "inputs": p.inputs,
        "environment": fingerprint(),
    }


def gate(p: Plan, verdict: Verdict, comparisons: int) -> None:
    """Refuse the model when an output is beyond its bound; a pass recorded for other settings goes first."""
    if verdict.passed:
        return
    p.manifest.forget(PARITY)  # a pass recorded for other settings must not let `package` ship this model
    if not verdict.failed:
        g = verdict.parted[0]
        raise ParityError(
            STAGE,
            f"{p.spec.name}: greedy generation on {g['engine']} parts from transformers' generate at new token {g['parted_at']} "
            f"of row {g['row']} in {g['case']}; eager's two best logits there are {g['margin']:.3g} apart, "
            f"more than twice the tolerance's bound {g['bound']:.3g}, so it is no near tie. Report: {p.report_json.relative_to(p.layout.root)}",
            "re-export (python -m pipeline export --force); if the logits steps pass and the tokens still part, the exported "
            "graph handles the cache or the positions differently from the model: report it with the model",
        )
    worst, tol = verdict.worst, p.tol
    raise ParityError(
        STAGE,
        f"{p.spec.name}: {len(verdict.failed)} of {comparisons} comparisons beyond tolerance; worst is "
        f"{worst.engine} output '{worst.output}' at {worst.case} (batch {worst.batch_size}): max abs error {worst.max_abs:.3g} "
        f"({worst.max_scaled:.3g} of the output's scale {worst.scale:.3g}), max rel {worst.max_rel:.3g} "
        f"({worst.tolerance_used:.3g}× the allowed atol {tol.atol:g} + rtol {tol.rtol:g}·|want| + scaled {tol.scaled:g}·scale). "
        f"Report: {p.report_json.relative_to(p.layout.root)}",
        "re-export (python -m pipeline export --force), or if the difference is expected for this "
        "model, set its tolerance in the model's spec or pass --atol/--rtol/--scaled",
    )


def summary_line(p: Plan, verdict: Verdict, comparisons: int) -> str:
    worst, sweep = verdict.worst, p.sweep
    note = f"; {len(verdict.vacuous)} output(s) prove nothing (see parity.md)" if verdict.vacuous else ""
    left_out = f"; left out {', '.join(s['case'] for s in sweep.skipped)} (budget)" if sweep.skipped else ""
    greedy = ""
    if verdict.greedy:
        ties = sum(1 for g in verdict.greedy if not g["same"])
        greedy = f"; greedy tokens as transformers' generate in {len(verdict.greedy) - ties} of {len(verdict.greedy)} rows" + (
            f" ({ties} parted at a near tie, see parity.md)" if ties else ""
        )
    return (
        f"{comparisons} comparisons passed; worst {worst.engine} '{worst.output}' {worst.case}: "
        f"max abs {worst.max_abs:.2g} ({worst.tolerance_used:.2g}× tolerance){greedy}{left_out}{note}"
    )


def run(settings: Settings) -> StageResult:
    """Compare, judge, write the report (before the gate decides, so a failure can be read), gate, record."""
    p = plan(settings)
    if skipped := up_to_date(p.manifest, PARITY, p.inputs, p.stage_settings, settings, STAGE, (p.report_json,), gate=True):
        return skipped
    start = time.perf_counter()
    comparison = compare_engines(p, settings)
    verdict = judge(comparison, p.tol)
    written = report(p, comparison, verdict)
    files.write_json(p.report_json, written)
    files.write_text(p.layout.reports / "parity.md", render_markdown(written))
    seconds = time.perf_counter() - start
    gate(p, verdict, len(comparison.results))
    details = {
        "passed": True,
        "worst": asdict(verdict.worst),
        "comparisons": len(comparison.results),
        "engines": comparison.engines,
        "cuda_precision": p.precision,
        "batch_sizes": p.sweep.ran_batch_sizes(),
        "left_out": [s["case"] for s in p.sweep.skipped],
        "vacuous": verdict.vacuous,
    }
    p.manifest.record(PARITY, p.report_json, STAGE, p.inputs, p.stage_settings, seconds, details)
    outputs = (p.report_json, p.layout.reports / "parity.md")
    return StageResult(STAGE, False, outputs, seconds, summary_line(p, verdict, len(comparison.results)), details)
