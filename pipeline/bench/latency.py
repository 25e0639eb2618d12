"""Latency benchmark: eager PyTorch vs TorchScript vs ONNX Runtime, in process and served.

`python -m pipeline bench` (or `make bench`) writes reports/<model>/latency.json,
latency.md and latency.png. In process, every engine gets the same seeded inputs and
the same intra-op thread count; warm-up is excluded; iterations are calibrated to a
time budget; engines take turns in rounds so machine drift hits them alike; GPU
calls are synchronised. Each engine is compared with its floor (the same API
running an identity model) and with eager. Cold start is measured on its own in a
fresh process per engine. The served part drives a real TorchServe with locust.
"""

from __future__ import annotations

import datetime
import gc
import json
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Literal, cast

import numpy as np
import psutil
from tqdm import tqdm

from pipeline.artifacts import cost, files
from pipeline.artifacts.environment import fingerprint
from pipeline.artifacts.manifest import Manifest
from pipeline.artifacts.names import CHECKPOINT, MAR, ONNX, PT2, TORCHSCRIPT, VARIANTS, gate_key, pt2_key
from pipeline.bench.engines import (
    CUDA_GRAPH_ENGINES,
    DEFAULT_ENGINES,
    DESCRIPTION,
    ENGINES,
    FLOOR_OF,
    KINDS,
    VARIANT_ENGINES,
    Engine,
    engines_of,
    identity_onnx,
    load,
    skip_reason,
)
from pipeline.bench.inputs import at_lengths, check_lengths
from pipeline.bench.sweep import CallBudget, Deadline, Sweep, calibrate, time_calls, warm_seconds
from pipeline.bench.sweep import Cost as EngineCost
from pipeline.errors import PipelineError
from pipeline.runtimes.pt2 import packages, verified_package
from pipeline.runtimes.runners import TorchRunner, cuda_available
from pipeline.runtimes.session import SessionConfig
from pipeline.settings import DEFAULT_MODEL, Layout, Settings, resolve
from pipeline.spec import Device, Precision, Tolerance
from pipeline.stages.fresh import stale
from pipeline.stages.parity import compare

STAGE = "bench"
BATCH_SIZES = (1, 8, 64, 512, 4096)
CONCURRENCY = (1, 4, 16, 64)
PERCENTILES = (50, 90, 99, 99.9)
SCHEMA = 1


@dataclass(frozen=True)
class BenchSettings:
    """What to measure and how long; recorded in the report."""

    model: str = DEFAULT_MODEL
    root: Path = Path(".")
    engines: tuple[str, ...] = DEFAULT_ENGINES
    batch_sizes: tuple[int, ...] = BATCH_SIZES
    devices: tuple[Device, ...] = ("cpu",)
    # Intra-op threads for torch and ONNX Runtime alike: the physical cores.
    threads: int = psutil.cpu_count(logical=False) or 1
    # Seconds of timed calls per engine and batch size, split over the rounds.
    budget_s: float = 0.5
    rounds: int = 5
    warmup_s: float = 0.2
    seed: int = 0
    cold_start: bool = True
    # torch.compile's cold start compiles from scratch (a minute on some machines); its
    # compile time is reported in process as setup s, so its fresh process is opt-in.
    cold_start_compile: bool = False
    served: Literal["auto", "running", "ray", "off"] = "auto"
    concurrency: tuple[int, ...] = CONCURRENCY
    served_seconds: float = 5.0
    # The served load: wrk (C, one thread) where installed, locust otherwise; or either, forced.
    load_generator: Literal["auto", "wrk", "locust"] = "auto"
    # Upper bound on timed calls per engine and batch (memory for the samples).
    max_iterations: int = 200_000
    # "sized": batch sizes past cost.MIN_SWEEP run, per engine, only where its measured cost
    # scaled to that batch fits the seconds left of sweep_budget_s, and the memory the last
    # batch took, scaled, fits sweep_budget_mb; "full": every batch size asked for.
    sweep: Literal["sized", "full"] = "sized"
    sweep_budget_s: float = 60.0
    sweep_budget_mb: float = 4096.0
    # ONNX Runtime on CUDA: the precision the archive serves (fp32 unless the spec says
    # tf32) and cuDNN's convolution algorithm search; both are recorded with each result.
    cuda_precision: Precision = "fp32"
    cudnn_conv_algo_search: Literal["EXHAUSTIVE", "HEURISTIC", "DEFAULT"] = "EXHAUSTIVE"
    # In process: each input axis named here stretched to this length ({"seq": 512}); none: the
    # spec's sample_inputs as they are. The reports are then latency-seq512.*, beside the others.
    lengths: dict[str, int] = field(default_factory=dict)
    # Seconds the whole run may take: no work starts after them, nor any whose measured cost would overrun them
    # (what is left out is reported); the report is written either way. None: no limit.
    time_limit_s: float | None = None

    def feed(self, spec, batch: int, seed: int) -> dict[str, np.ndarray]:
        """The seeded in-process feed at `batch` rows, at the lengths asked for."""
        return at_lengths(spec, spec.sample_inputs(batch, np.random.default_rng(seed)), self.lengths)

    def report_stem(self) -> str:
        return "latency" + "".join(f"-{name}{length}" for name, length in sorted(self.lengths.items()))

    def calls(self) -> CallBudget:
        return CallBudget(self.budget_s, self.rounds, self.warmup_s, self.max_iterations)

    def session(self, device: Device) -> SessionConfig:
        """The ONNX Runtime session every ORT engine on `device` gets (floors included)."""
        return SessionConfig(
            device=device,
            threads=self.threads,
            precision=self.cuda_precision,
            cudnn_conv_algo_search=self.cudnn_conv_algo_search,
        )


@dataclass
class Timing:
    """Per-call latencies of one engine at one batch size."""

    engine: str
    device: str
    provider: str
    batch: int
    # Seconds from bind to the end of warm-up: session per shape, graph capture, compilation.
    setup_s: float = 0.0
    samples_ns: list[np.ndarray] = field(default_factory=list)

    def p50_s(self) -> float:
        return float(np.median(np.concatenate(self.samples_ns))) / 1e9

    def stats(self) -> dict:
        ns = np.concatenate(self.samples_ns).astype(np.float64)
        ms = ns / 1e6
        pct = np.percentile(ms, PERCENTILES)
        mean = float(ms.mean())
        return {
            "engine": self.engine,
            "device": self.device,
            "provider": self.provider,
            "batch": self.batch,
            "iterations": int(ms.size),
            **{_pkey(p): float(v) for p, v in zip(PERCENTILES, pct)},
            "mean_ms": mean,
            "std_ms": float(ms.std()),
            "min_ms": float(ms.min()),
            "max_ms": float(ms.max()),
            "throughput_per_s": self.batch / (mean / 1e3),
            "setup_s": self.setup_s,
        }


def _pkey(p: float) -> str:
    return f"p{str(p).replace('.', '')}_ms"


def _model_factory(spec, manifest: Manifest):
    from pipeline.artifacts import checkpoint

    def factory():
        model, _ = checkpoint.load_model(manifest, spec, STAGE)
        return model

    return factory


def _wanted(settings: BenchSettings, device: str | None = None) -> list[str]:
    """Engines plus the floors they are compared with (on `device`, those that exist there), floors first."""
    floors = sorted({FLOOR_OF[e] for e in settings.engines if e in FLOOR_OF and not (device and skip_reason(e, device))})
    return [*floors, *settings.engines]


@dataclass
class InProcess:
    """The in-process part of a report: timings, failures, pairings that cannot exist, parity checks, the sweep."""

    records: list[dict] = field(default_factory=list)
    failures: list[dict] = field(default_factory=list)
    skipped: list[dict] = field(default_factory=list)
    parity: list[dict] = field(default_factory=list)
    sweep: Sweep | None = None


def in_process(settings: BenchSettings, spec, layout: Layout, scratch: Path, bar: tqdm, deadline: Deadline) -> InProcess:
    """Every engine × batch size on every device, as far as the sweep's budget and the time limit allow."""
    import torch

    manifest = Manifest(layout.root, spec.name, settings.model)
    ts_path, ts = manifest.verified(TORCHSCRIPT, STAGE)
    paths = {
        "onnx": manifest.verified(ONNX, STAGE)[0],
        "torchscript": ts_path,
        "identity": identity_onnx(spec, scratch / "identity.onnx"),
        **{v: manifest.verified(v, STAGE)[0] for v in gated_variants(manifest)},
        **{pt2_key(d): verified_package(manifest, d, STAGE) for d in packages(manifest)},
    }
    # Paid once, in the pt2 stage, for every batch size: the first batch timed carries it as the package's setup.
    compiled_s = {d: rec.details.get("export_s", 0.0) + rec.details.get("compile_s", 0.0) for d, rec in packages(manifest).items()}
    manifest.verified(CHECKPOINT, STAGE)
    torch.set_num_threads(settings.threads)
    factory = _model_factory(spec, manifest)
    sweep = Sweep(settings.sweep, list(settings.batch_sizes), settings.sweep_budget_s, memory_budget_mb(settings), deadline=deadline)
    out = InProcess(sweep=sweep)
    if ts.not_made:  # check() left it out of the engines; the report says why
        out.skipped.append({"engine": "torchscript", "device": "any", "reason": f"not made: {ts.not_made}"})
    for device in settings.devices:
        engines = _load_engines(settings, spec, device, paths, factory, out, bar)
        if "aotinductor" in engines:
            engines["aotinductor"].details["compile_s"] = compiled_s.get(device, 0.0)
        reference = _Reference(spec, factory, device) if any(e.answer for e in engines.values()) else None
        costs: dict[str, EngineCost] = {}
        last: EngineCost | None = None
        for batch in settings.batch_sizes:
            assert out.sweep is not None
            if not out.sweep.batch_fits(device, batch, last):
                bar.update(settings.rounds)
                continue
            fits = {
                n: e
                for n, e in engines.items()
                if not n.startswith("floor:") and out.sweep.engine_fits(device, batch, n, costs.get(n), settings.calls())
            }
            fits |= {f: engines[f] for n in list(fits) if (f := FLOOR_OF.get(n, "")) in engines}  # a floor follows its engines
            if not fits:
                bar.update(settings.rounds)
                continue
            began = time.perf_counter()
            with cost.measure() as used:
                timings = _time_batch(settings, spec, device, batch, fits, reference, out, bar)
            out.sweep.finish_batch(device, batch, sorted(timings), time.perf_counter() - began)
            for name, (timing, overhead_s) in timings.items():
                costs[name] = EngineCost(batch, timing.p50_s(), overhead_s)
            last = EngineCost(batch, 0.0, 0.0, used.extra_mb)
            out.records.extend(t.stats() for t, _ in timings.values())
    out.records = _relate(out.records)
    return out


def _load_engines(settings, spec, device: Device, paths, factory, out: InProcess, bar: tqdm) -> dict[str, Engine]:
    engines: dict[str, Engine] = {}
    for name in _wanted(settings, device):
        reason = skip_reason(name, device)
        if reason:  # a pairing that cannot exist (CUDA graphs on the CPU) is not a failure
            out.skipped.append({"engine": name, "device": device, "reason": reason})
            continue
        bar.set_postfix_str(f"{device} load {name}")
        try:
            engines[name] = load(name, spec, settings.session(device), paths, factory, len(settings.batch_sizes) + 8)
        except Exception as exc:  # an engine that cannot run here is reported, not fatal
            out.failures.append({"engine": name, "device": device, "batch": None, "error": _reason(exc)})
    return engines


class _Reference:
    """Eager's outputs, the answers an engine outside the parity stage is held to."""

    def __init__(self, spec, factory, device: str):
        self.runner = TorchRunner("eager", factory(), spec, device)

    def check(self, engine: Engine, feed: dict, batch: int, tol: Tolerance) -> dict:
        assert engine.answer is not None
        want, got = self.runner.infer(feed), engine.answer(feed)
        diffs = [compare(engine.name, f"bench b={batch}", name, want[name], got[name], tol) for name in want]
        worst = max(diffs, key=lambda d: d.tolerance_used)
        return {
            "engine": engine.name,
            "device": engine.device,
            "batch": batch,
            "passed": all(d.passed for d in diffs),
            "worst_output": worst.output,
            "max_abs": worst.max_abs,
            "tolerance_used": worst.tolerance_used,
        }


def _time_batch(settings, spec, device, batch, engines: dict[str, Engine], reference, out: InProcess, bar: tqdm):
    """Warm up and time each engine at one batch size, in rounds of a shuffled order; {name: (timing, setup beyond its calls)}."""
    feed = settings.feed(spec, batch, settings.seed * 1000 + batch)
    calls, timings, per_round = {}, {}, {}
    for name, engine in engines.items():
        assert out.sweep is not None
        if not out.sweep.may_start(device, batch, name):
            continue
        bar.set_postfix_str(f"{device} b={batch} warm up {name}")
        try:
            if engine.answer is not None and reference is not None:
                check = reference.check(engine, feed, batch, held_tolerance(spec, name))
                out.parity.append(check)
                if not check["passed"]:
                    raise PipelineError(
                        STAGE,
                        f"answers differ from eager beyond the model's tolerance ({check['tolerance_used']:.3g}x the bound "
                        f"on {check['worst_output']!r})",
                        "its times are left out: the same model.onnx passed parity on ONNX Runtime, so the difference is this engine's",
                    )
            setup = time.perf_counter()
            calls[name] = engine.bind(feed)
            per_round[name] = calibrate(calls[name], settings.calls())
        except Exception as exc:
            out.failures.append({"engine": name, "device": device, "batch": batch, "error": _reason(exc)})
            calls.pop(name, None)
            continue
        timings[name] = Timing(name, device, engine.provider, batch, time.perf_counter() - setup + engine.details.pop("compile_s", 0.0))
    order_rng = np.random.default_rng(settings.seed + batch)
    gc.collect()
    gc.disable()  # as timeit does: a collection inside one call is noise, not the engine
    try:
        for _ in range(settings.rounds):
            for name in order_rng.permutation(sorted(calls)):
                timings[name].samples_ns.append(time_calls(calls[name], per_round[name]))
            bar.update(1)
    finally:
        gc.enable()
    return {name: (t, max(0.0, t.setup_s - warm_seconds(t.p50_s(), settings.calls()))) for name, t in timings.items()}


def held_tolerance(spec, engine: str) -> Tolerance:
    """The bound an engine outside the parity stage is held to: the model's own, or its fp16_tolerance for an fp16 engine."""
    if KINDS[engine].precision != "fp16":
        return spec.tolerance
    if spec.fp16_tolerance is None:
        raise PipelineError(
            STAGE,
            f"{spec.name} declares no fp16_tolerance, so {engine}'s answers have nothing to be held to",
            "declare fp16_tolerance in the model's spec, e.g. Tolerance(atol=1e-2, rtol=1e-2, max_mismatch=0.01)",
        )
    return spec.fp16_tolerance


def memory_budget_mb(settings: BenchSettings) -> float:
    """The sweep's memory budget: the one asked for, at most half of what the machine has free now."""
    return round(min(settings.sweep_budget_mb, psutil.virtual_memory().available / cost.MB / 2), 0)


def _relate(records: list[dict]) -> list[dict]:
    """Add each engine's ratio to its floor and its speedup over eager (same device, batch)."""
    index = {(r["device"], r["batch"], r["engine"]): r for r in records}
    for r in records:
        floor = index.get((r["device"], r["batch"], FLOOR_OF.get(r["engine"], "")))
        eager = index.get((r["device"], r["batch"], "eager"))
        r["floor"] = floor["engine"] if floor else None
        r["ratio_to_floor_p50"] = r["p50_ms"] / floor["p50_ms"] if floor else None
        is_floor = r["engine"].startswith("floor:")
        r["speedup_vs_eager_p50"] = eager["p50_ms"] / r["p50_ms"] if eager and not is_floor else None
    return records


def _reason(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {' '.join(text[:3])[:400]}" if text else type(exc).__name__


def gated_variants(manifest: Manifest) -> list[str]:
    """The variants whose gate passed for their current file and the current fp32 model."""
    from pipeline.stages.variants import gate_passed

    return [v for v in VARIANTS if gate_passed(manifest, v)]


def variants_summary(manifest: Manifest, records: list[dict], cold: list[dict]) -> list[dict]:
    """Per gated variant: size on disk, the task metric, cold start and throughput against fp32 ONNX Runtime."""
    out = []
    index = {(r["device"], r["batch"], r["engine"]): r for r in records}
    for variant in gated_variants(manifest):
        engine = f"onnxruntime-{variant}"
        gate = manifest.records[gate_key(variant)].details
        device = gate["device"]
        throughput = {}
        for (d, batch, e), r in index.items():
            base = index.get((d, batch, "onnxruntime"))
            if d == device and e == engine and base:
                throughput[batch] = base["p50_ms"] / r["p50_ms"]
        colds = {c["engine"]: c for c in cold if c.get("device") == device and "total_s" in c}
        out.append(
            {
                "variant": variant,
                "device": device,
                "method": manifest.records[variant].details.get("method"),
                "bytes": manifest.records[variant].bytes,
                "size_vs_fp32": manifest.records[variant].bytes / manifest.records[ONNX].bytes,
                "task_metric": gate.get("task_metric"),
                "throughput_vs_fp32_p50": throughput,
                "cold_start_s": colds.get(engine, {}).get("total_s"),
                "fp32_cold_start_s": colds.get("onnxruntime", {}).get("total_s"),
            }
        )
    return out


def cold_engines(settings: BenchSettings) -> list[str]:
    """The engines whose cold start is measured; the others share a session creation or model load with one."""
    compiles = ("torch.compile", "torch.compile-max-autotune")
    skip = {"onnxruntime-run", "eager-fp16", *CUDA_GRAPH_ENGINES, *(() if settings.cold_start_compile else compiles)}
    return [e for e in settings.engines if e not in skip]


def cold_starts(settings: BenchSettings, spec, layout: Layout, scratch: Path, bar: tqdm, deadline: Deadline) -> list[dict]:
    """Each engine in a fresh process: import, load/session creation, first inference; none starts past the time limit."""
    feed = settings.feed(spec, 1, settings.seed)
    feed_path = scratch / "cold_feed.npz"
    np.savez(feed_path, **cast(dict[str, Any], feed))  # numpy types its keyword arguments as allow_pickle's bool
    out = []
    for device in settings.devices:
        for engine in cold_engines(settings):
            if skip_reason(engine, device):  # listed once, in the report's skipped pairings
                bar.update(1)
                continue
            late = deadline.over()
            if late is not None:
                out.append({"engine": engine, "device": device, "left_out": late})
                bar.update(1)
                continue
            bar.set_postfix_str(f"cold start {engine} ({device})")
            job = {
                "engine": engine,
                "device": device,
                "threads": settings.threads,
                "feed": str(feed_path),
                "inputs": [t.name for t in spec.inputs],
                "onnx": str(layout.variant_onnx(VARIANT_ENGINES[engine]) if engine in VARIANT_ENGINES else layout.onnx),
                "torchscript": str(layout.torchscript),
                "pt2": str(layout.pt2(device)),
                "model": settings.model,
                "root": str(layout.root),
                "session": asdict(replace(settings.session(device), tensorrt=engine == "onnxruntime-tensorrt")),
            }
            job_path = scratch / "cold_job.json"
            job_path.write_text(json.dumps(job))
            try:
                proc = subprocess.run(
                    [sys.executable, "-m", "pipeline.bench.cold", str(job_path)],
                    capture_output=True,
                    text=True,
                    timeout=min(600, deadline.left_s()),
                )
                if proc.returncode != 0:
                    raise RuntimeError(proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else f"exit {proc.returncode}")
                out.append(json.loads(proc.stdout.strip().splitlines()[-1]))
            except Exception as exc:
                out.append({"engine": engine, "device": device, "error": _reason(exc)})
            bar.update(1)
    return out


def environment(settings: BenchSettings) -> dict:
    import torch

    env = dict(fingerprint())
    env.update(
        {
            "physical_cores": psutil.cpu_count(logical=False),
            "logical_cores": psutil.cpu_count(logical=True),
            "intra_op_threads": settings.threads,
            # The ONNX Runtime provider options every ORT engine and cold start ran with.
            "onnxruntime_sessions": {device: settings.session(device).describe() for device in settings.devices},
            "torch_threads": torch.get_num_threads(),
            "memory_gib": round(psutil.virtual_memory().total / 2**30, 1),
        }
    )
    if cuda_available():
        env["cuda"] = torch.version.cuda
        env["cudnn"] = torch.backends.cudnn.version()
        env["gpu"] = torch.cuda.get_device_name(0)
        env["gpu_driver"] = _nvidia_driver()
    return env


def _nvidia_driver() -> str | None:
    try:
        out = subprocess.run(
            ["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"], capture_output=True, text=True, timeout=20
        )
        return out.stdout.strip().splitlines()[0] if out.returncode == 0 and out.stdout.strip() else None
    except (OSError, subprocess.TimeoutExpired):
        return None


def _best(index: dict, device: str, batch: int, engines: tuple[str, ...]) -> dict | None:
    found = [index[(device, batch, e)] for e in engines if (device, batch, e) in index]
    return min(found, key=lambda r: r["p50_ms"]) if found else None


def verdicts(records: list[dict]) -> list[dict]:
    """At each device, batch size and precision: the fastest ONNX Runtime engine against the fastest PyTorch one, at p50,
    and the fastest engine of all (OpenVINO included), against eager fp32 and the fastest PyTorch engine of that precision."""
    index = {(r["device"], r["batch"], r["engine"]): r for r in records}
    out = []
    for device, batch in sorted({(r["device"], r["batch"]) for r in records}):
        for precision in ("fp32", "fp16"):
            ort = _best(index, device, batch, engines_of(precision, "onnxruntime"))
            torch_ = _best(index, device, batch, engines_of(precision, "torch"))
            fastest, eager = _best(index, device, batch, engines_of(precision)), index.get((device, batch, "eager"))
            if not (ort and torch_ and fastest):
                continue
            ort_wins = ort["p50_ms"] <= torch_["p50_ms"]
            winner, loser = (ort, torch_) if ort_wins else (torch_, ort)
            out.append(
                {
                    "device": device,
                    "batch": batch,
                    "precision": precision,
                    "onnxruntime": ort["engine"],
                    "pytorch": torch_["engine"],
                    "winner": "ONNX Runtime" if ort_wins else "PyTorch",
                    "winner_engine": winner["engine"],
                    "by": loser["p50_ms"] / winner["p50_ms"],
                    "fastest": fastest["engine"],
                    "fastest_vs_eager": eager["p50_ms"] / fastest["p50_ms"] if eager else None,
                    "fastest_vs_best_pytorch": torch_["p50_ms"] / fastest["p50_ms"],
                }
            )
    return out


def require_current(spec, manifest: Manifest, model: str, keys: tuple[str, ...]) -> None:
    """Refuse artifacts that are missing, or older than what they were built from (the generation benchmark's check too)."""
    for key in keys:
        if key not in manifest.records:
            raise PipelineError(STAGE, f"{spec.name} has no {key} yet", f"build it first: python -m pipeline all --model {model}")
    if reason := stale(spec, manifest, MAR if MAR in manifest.records else ONNX):
        raise PipelineError(
            STAGE,
            f"{spec.name}'s artifacts are older than what they were built from: {reason}",
            f"rebuild what changed: python -m pipeline all --model {manifest.command} (make bench does it first)",
        )


def check(settings: BenchSettings, spec, manifest: Manifest) -> BenchSettings:
    """Refuse what cannot be measured here, before any work; the settings with the gated variants added."""
    if "cuda" in settings.devices and not cuda_available():
        raise PipelineError(
            STAGE,
            "--device cuda was asked for, but torch sees no CUDA device on this machine",
            "run on a machine with an NVIDIA GPU (scripts/bench_cuda.sh), or use --device cpu; a CPU run is never labelled CUDA",
        )
    unknown = [e for e in settings.engines if e not in ENGINES]
    if unknown:
        raise PipelineError(STAGE, f"unknown engine(s) {unknown}", f"choose from {', '.join(ENGINES)}")
    check_lengths(spec, settings.lengths, STAGE)
    require_current(spec, manifest, settings.model, (CHECKPOINT, TORCHSCRIPT, ONNX))
    default = settings.engines == DEFAULT_ENGINES
    if default:  # the gated variants run beside fp32 unless --engines names others
        settings = replace(settings, engines=(*settings.engines, *(f"onnxruntime-{v}" for v in gated_variants(manifest))))
    if "aotinductor" in settings.engines and not packages(manifest):
        rec = manifest.records.get(PT2)
        why = rec.not_made if rec is not None else "the pt2 stage has not run"
        if not default:
            raise PipelineError(
                STAGE,
                f"--engines names aotinductor, but no AOTInductor package was made for {spec.name}: {why}",
                f"make it (python -m pipeline pt2 --model {manifest.command}), or leave aotinductor out of --engines",
            )
        settings = replace(settings, engines=tuple(e for e in settings.engines if e != "aotinductor"))
    not_made = manifest.records[TORCHSCRIPT].not_made
    if not_made and "torchscript" in settings.engines:
        if not default:
            raise PipelineError(
                STAGE,
                f"--engines names torchscript, but TorchScript was not made for {spec.name}: {not_made}",
                "leave torchscript out of --engines; the ONNX engines and eager measure the model",
            )
        settings = replace(settings, engines=tuple(e for e in settings.engines if e != "torchscript"))
    return settings


def run(settings: BenchSettings) -> dict:
    """Measure everything asked for and write latency.json, latency.md and latency.png (latency-seq512.* with lengths)."""
    from pipeline.bench import report as bench_report
    from pipeline.bench import served as bench_served

    spec, layout = resolve(Settings(model=settings.model, root=settings.root))
    if spec.generation is not None:  # a decoder is measured in tokens per second: the generation benchmark
        from pipeline.bench import generation

        return generation.run(generation.GenerationSettings(model=settings.model, root=settings.root, threads=settings.threads))
    manifest = Manifest(layout.root, spec.name, settings.model)
    settings = check(settings, spec, manifest)
    started = time.perf_counter()
    deadline = Deadline(settings.time_limit_s, started)
    cost.start()
    steps = len(settings.devices) * len(settings.batch_sizes) * settings.rounds
    steps += len(settings.devices) * len(cold_engines(settings)) if settings.cold_start else 0
    steps += bench_served.steps(settings, spec)
    with (
        tempfile.TemporaryDirectory(prefix="bench-") as tmp,
        tqdm(total=steps, desc=f"bench {spec.name}", unit="step", disable=None, mininterval=0.5) as bar,
    ):
        scratch = Path(tmp)
        measured = in_process(settings, spec, layout, scratch, bar, deadline)
        cold = cold_starts(settings, spec, layout, scratch, bar, deadline) if settings.cold_start else []
        served_late = deadline.over() if settings.served != "off" else None
        served = bench_served.run(settings, spec, layout, bar) if settings.served != "off" and served_late is None else None
    report = {
        "schema": SCHEMA,
        "model": spec.name,
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "seconds": time.perf_counter() - started,
        # This process's peak resident memory (the in-process engines, the sweep); servers and cold starts run apart.
        "peak_memory_mb": cost.peak_mb(),
        "settings": {**asdict(settings), "root": str(settings.root)},
        "environment": environment(settings),
        "engines": {name: DESCRIPTION[name] for name in _wanted(settings)},
        "onnx_sha256": manifest.records[ONNX].sha256,
        "sweep": measured.sweep.to_json() if measured.sweep else None,
        "in_process": measured.records,
        "failures": measured.failures,
        "skipped": measured.skipped,
        "held_to_parity": measured.parity,
        "sessions": {device: settings.session(device).describe() for device in settings.devices},
        "verdicts": verdicts(measured.records),
        "cold_start": cold,
        "variants": variants_summary(manifest, measured.records, cold),
        "served": served,
        "served_left_out": served_late,
    }
    out = layout.reports
    stem = settings.report_stem()
    files.write_json(out / f"{stem}.json", report)
    files.write_text(out / f"{stem}.md", bench_report.markdown(report))
    bench_report.plot(report, out / f"{stem}.png")
    return report
