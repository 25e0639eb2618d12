"""`python -m pipeline tune`: the serving config that meets a p99 goal, found on a real TorchServe (or Ray Serve).

Each config of a small grid (batch size and batch delay, workers, ONNX Runtime intra-op
threads per worker) is packaged from the verified model into a private project folder,
served by TorchServe on free loopback ports, loaded at every concurrency asked for (wrk,
or locust: `pipeline.bench.loadgen.measure`), and stopped before the next starts. With
`--on ray` the same grid runs on a local Ray Serve cluster: replicas in place of workers,
`serve.batch`'s size and wait from the archive's batch size and delay, the load spread over
the replicas' own addresses (direct ingress). The pick
(`pick`, a pure function of the table) is the config with the most requests/s at the
largest concurrency asked whose p99 meets the goal at every concurrency, with no errors.
The user's archive is then packaged again with it (the package stage, the same verified
model), and the manifest gets a `tune` record. When no config meets the goal the report
still names the closest, the archive is left as it was, and the command fails, as a
failed parity gate does.
"""

from __future__ import annotations

import dataclasses
import io
import math
import os
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

import psutil
from tqdm import tqdm

from pipeline.artifacts import files
from pipeline.artifacts.archive import verified_archive
from pipeline.artifacts.manifest import Manifest
from pipeline.artifacts.names import ONNX, tune_key
from pipeline.bench.served import copy_project, load
from pipeline.errors import PipelineError
from pipeline.runtimes.session import cuda_provider_available
from pipeline.serving.common.samples import Request, sample_requests
from pipeline.serving.ray.server import RayInfo
from pipeline.serving.torchserve import server as serve
from pipeline.settings import DEFAULT_MODEL, Layout, Settings, StageResult, resolve
from pipeline.stages import package

STAGE = "tune"
CONCURRENCY = (1, 4, 16, 64)
WARMUP_S = 1.0
# A lone request waits the whole batch delay, so delays past a few ms cannot meet a
# few-ms goal; batch 1 has no delay at all (TorchServe sends a full batch at once).
BATCH_SIZES = (1, 8, 32)
DELAYS_MS = (1, 2, 5)
WORKERS = (1, 2)


def physical_cores() -> int:
    return psutil.cpu_count(logical=False) or 1


Server = Literal["torchserve", "ray"]


@dataclass(frozen=True)
class ServingConfig:
    """One point of the grid: what goes into the archive (model-config.yaml and io_contract.json),
    and on Ray the replica count `workers` stands for (each replica is one process, as a worker is)."""

    batch_size: int
    max_batch_delay_ms: int
    workers: int
    threads: int
    server: Server = "torchserve"

    @property
    def name(self) -> str:
        delay = f"-d{self.max_batch_delay_ms}" if self.batch_size > 1 else ""
        if self.server == "ray":
            return f"ray-b{self.batch_size}{delay}-r{self.workers}-t{self.threads}"
        return f"b{self.batch_size}{delay}-w{self.workers}-t{self.threads}"

    def applied(self, base: Settings) -> Settings:
        """The package stage's settings: `base` with this config."""
        return dataclasses.replace(
            base,
            serve_batch_size=self.batch_size,
            serve_max_batch_delay_ms=self.max_batch_delay_ms,
            serve_workers=self.workers,
            serve_threads=self.threads,
        )

    def options(self) -> str:
        """The same config as package options (on Ray, the replicas are serve's option)."""
        batching = f"--batch-size {self.batch_size} --max-batch-delay-ms {self.max_batch_delay_ms}"
        if self.server == "ray":
            return f"{batching} --threads {self.threads}"
        return f"{batching} --workers {self.workers} --threads {self.threads}"

    def serve_command(self, model: str) -> str:
        """How to serve the archive as measured."""
        if self.server == "ray":
            return f"python -m pipeline serve --on ray --model {model} --replicas {self.workers}"
        return f"python -m pipeline serve --model {model}"


@dataclass(frozen=True)
class TuneSettings:
    """The goal, the load, and the grid to sweep; recorded in the report and the manifest."""

    model: str = DEFAULT_MODEL
    root: Path = Path(".")
    on: Server = "torchserve"  # the server to tune for; on "ray", `workers` are replica counts
    p99_ms: float = 5.0
    concurrency: tuple[int, ...] = CONCURRENCY
    seconds: float = 3.0  # of load per config and concurrency, after WARMUP_S of warm-up per config
    batch_sizes: tuple[int, ...] = BATCH_SIZES
    delays_ms: tuple[int, ...] = DELAYS_MS  # for batch sizes over 1
    workers: tuple[int, ...] = WORKERS  # TorchServe workers, or Ray replicas
    threads: tuple[int, ...] | None = None  # None: 1 and this machine's physical cores
    load_generator: Literal["auto", "wrk", "locust"] = "auto"
    variant: str | None = None  # tune a variant's archive ("int8") instead of the fp32 one


def grid(settings: TuneSettings) -> list[ServingConfig]:
    """Every config to measure: batch 1 once (no delay to wait), larger batches at each delay, times workers and threads.

    With the default threads (1 and the physical cores), a multi-threaded worker is tried only
    where workers x threads fit the physical cores: more only makes the sessions fight for them.
    Threads given explicitly are tried with every worker count.
    """
    cores = physical_cores()
    threads = settings.threads or tuple(dict.fromkeys((1, cores)))
    pairs = [(w, t) for w in dict.fromkeys(settings.workers) for t in dict.fromkeys(threads)]
    if settings.threads is None:
        pairs = [(w, t) for w, t in pairs if t == 1 or w * t <= cores]
    batching = [(b, settings.delays_ms[0] if b == 1 else d) for b in dict.fromkeys(settings.batch_sizes) for d in settings.delays_ms]
    return [ServingConfig(b, d, w, t, settings.on) for b, d in dict.fromkeys(batching) for w, t in pairs]


# The table: one row per config, {"config": name, **ServingConfig fields, "runs": [loadgen summaries]}
# or, for a config that could not be served, {"config": ..., "failed": message, "runs": []}.


def worst_p99(row: dict) -> float:
    """The row's highest p99 over its concurrencies (infinite when a run had no answer, or it did not run)."""
    p99s = [r["p99_ms"] for r in row["runs"]]
    if not p99s or any(p is None or math.isnan(p) for p in p99s):
        return math.inf
    return max(p99s)


def errors(row: dict) -> int:
    return sum(r["errors"] for r in row["runs"]) if not row.get("failed") else 1


def throughput(row: dict) -> float:
    """Requests/s at the largest concurrency the row ran: the load the service is sized for."""
    if not row["runs"]:
        return 0.0
    return max(row["runs"], key=lambda r: r["concurrency"])["requests_per_s"]


def meets(row: dict, p99_ms: float) -> bool:
    return bool(row["runs"]) and errors(row) == 0 and worst_p99(row) <= p99_ms


def pareto(table: list[dict]) -> list[str]:
    """Configs with no errors that no other such config beats on both worst p99 and requests/s, fastest p99 first."""
    points = {r["config"]: (worst_p99(r), throughput(r)) for r in table if r["runs"] and errors(r) == 0 and math.isfinite(worst_p99(r))}

    def beaten(p99: float, rps: float) -> bool:
        return any(q <= p99 and u >= rps and (q, u) != (p99, rps) for q, u in points.values())

    return sorted((name for name, point in points.items() if not beaten(*point)), key=lambda name: points[name])


def pick(table: list[dict], p99_ms: float) -> dict[str, Any]:
    """The choice: the most requests/s at the largest concurrency among configs whose p99 meets
    the goal at every concurrency with zero errors (a lower worst p99 breaks a tie); and, met or
    not, the closest config: zero errors first, then the lowest worst p99."""
    if not table:
        raise ValueError("pick needs at least one config")
    met = [r for r in table if meets(r, p99_ms)]
    chosen = max(met, key=lambda r: (throughput(r), -worst_p99(r))) if met else None
    closest = min(table, key=lambda r: (errors(r) > 0, worst_p99(r), -throughput(r)))
    return {
        "goal_p99_ms": p99_ms,
        "met": [r["config"] for r in met],
        "chosen": None if chosen is None else chosen["config"],
        "closest": closest["config"],
        "pareto": pareto(table),
    }


def _why(table: list[dict], choice: dict, top: int) -> str:
    by = {r["config"]: r for r in table}
    if choice["chosen"] is None:
        c = by[choice["closest"]]
        return (
            f"no config met p99 ≤ {choice['goal_p99_ms']:g} ms at every concurrency with zero errors; "
            f"the closest is {c['config']}: worst p99 {worst_p99(c):.3g} ms, {errors(c)} errors"
        )
    c = by[choice["chosen"]]
    return (
        f"{c['config']} serves the most requests/s at {top} clients ({throughput(c):,.0f}) of the "
        f"{len(choice['met'])} config(s) whose p99 met {choice['goal_p99_ms']:g} ms at every concurrency "
        f"(its worst: {worst_p99(c):.3g} ms), with zero errors"
    )


def run(settings: TuneSettings) -> dict:
    """Sweep the grid on real TorchServe servers, pick, package the user's archive with the pick, report.

    Raises a PipelineError (after writing the report) when no config met the goal.
    """
    _check(settings)
    spec, layout = resolve(Settings(model=settings.model, root=settings.root))
    manifest = Manifest(layout.root, spec.name, settings.model)
    base = archived_settings(manifest, settings)
    configs = grid(settings)
    request, _ = sample_requests(spec)
    start = time.perf_counter()
    table = measure_grid(settings, layout, configs, base, request)
    choice = pick(table, settings.p99_ms)
    chosen = next((c for c in configs if c.name == choice["chosen"]), None)
    archive = None
    if chosen is not None:  # the user's archive, packaged again from the same verified model with the pick
        result = _package(chosen.applied(base))
        archive = {"path": layout.archive(settings.variant).relative_to(layout.root).as_posix(), "repackaged": not result.skipped}
    report = {
        "model": spec.name,
        "variant": settings.variant,
        "settings": {k: v for k, v in asdict(settings).items() if k not in ("model", "root")},
        "grid": [c.name for c in configs],
        "generator": next((r["generator"] for row in table for r in row["runs"]), None),
        "ranked_at_concurrency": max(settings.concurrency),
        "seconds": time.perf_counter() - start,
        "table": table,
        **choice,
        "chosen_config": None if chosen is None else asdict(chosen),
        "package_options": None if chosen is None else chosen.options(),
        "serve_command": None if chosen is None else chosen.serve_command(settings.model),
        "why": _why(table, choice, max(settings.concurrency)),
        "archive": archive,
    }
    paths = write_report(report, layout, settings.variant, settings.on)
    _record(layout, settings, report, paths[0])
    if chosen is None:
        raise PipelineError(
            STAGE,
            f"{report['why']}; the archive was left as it was (see {paths[1].relative_to(layout.root)})",
            f"loosen the goal (python -m pipeline tune --model {settings.model} --p99-ms {_looser(table, choice)}), ask for "
            "fewer clients (--concurrency), or widen the grid (--batch-sizes, --delays-ms, --workers, --threads)",
        )
    return report


def archived_settings(manifest: Manifest, settings: TuneSettings) -> Settings:
    """The package settings of the archive as it is (checked), for what tuning leaves alone:
    the CUDA precision parity verified and the response timeout."""
    _, rec = verified_archive(manifest, settings.variant, STAGE)
    return Settings(
        model=settings.model,
        root=settings.root,
        variant=settings.variant,
        cuda_precision=rec.settings["contract"].get("cuda_precision"),
        serve_response_timeout_s=rec.settings["model_config"]["responseTimeout"],
    )


def _check(settings: TuneSettings) -> None:
    if settings.on == "ray":
        from pipeline.serving.ray.server import require_ray

        require_ray()
    if not settings.p99_ms > 0 or not settings.seconds > 0 or not settings.concurrency:
        raise PipelineError(STAGE, "--p99-ms and --seconds must be over 0, with at least one concurrency", "e.g. --p99-ms 5 --seconds 3")
    if settings.variant is not None and _device(settings.variant) == "cuda" and not cuda_provider_available():
        raise PipelineError(
            STAGE,
            f"the {settings.variant} variant serves on CUDA only, and this onnxruntime has no CUDA provider",
            "tune it on a GPU machine with onnxruntime-gpu, or tune the fp32 archive (drop --variant)",
        )
    threads = os.environ.get("OMP_NUM_THREADS")
    if threads:  # the handler lets it override the archive's threads: every config would run with these
        raise PipelineError(
            STAGE,
            f"OMP_NUM_THREADS={threads} is set, and every worker would take it over the threads under test",
            f"unset it for the sweep: env -u OMP_NUM_THREADS python -m pipeline tune --model {settings.model} ...",
        )


def _device(variant: str) -> str:
    from pipeline.stages.variants import DEVICE  # the variants stage's imports, only for a variant

    return DEVICE[variant]


def _looser(table: list[dict], choice: dict) -> str:
    p99 = worst_p99(next(r for r in table if r["config"] == choice["closest"]))
    return f"{math.ceil(p99 * 1.1 * 10) / 10:g}" if math.isfinite(p99) else "<more>"


def _package(settings: Settings) -> StageResult:
    """The package stage for the model's archive, or a variant's."""
    if settings.variant is None:
        return package.run(settings)
    from pipeline.stages import variants

    return variants.package_variant(settings, settings.variant)


def measure_grid(settings: TuneSettings, layout: Layout, configs: list[ServingConfig], base: Settings, request: Request) -> list[dict]:
    """Each config packaged into one private project, served alone, loaded at every concurrency, stopped."""
    table = []
    steps = len(configs) * (len(settings.concurrency) + 1)
    with (
        tempfile.TemporaryDirectory(prefix="tune-") as tmp,
        tqdm(total=steps, desc=f"tune {layout.model}", unit="run", disable=None, mininterval=0.5) as bar,
    ):
        copy_project(layout, Path(tmp))
        for config in configs:
            bar.set_postfix_str(f"{config.name} start")
            project = config.applied(dataclasses.replace(base, root=Path(tmp), force=True))
            row: dict[str, Any] = {"config": config.name, **asdict(config), "runs": []}
            done = bar.n
            try:
                _package(project)
                row["runs"] = serve_and_load(project, settings, request, config, bar)
            except PipelineError as exc:  # recorded, and the sweep goes on: one config that cannot serve is a result
                row["failed"] = str(exc)
            bar.update(done + len(settings.concurrency) + 1 - bar.n)
            table.append(row)
    return table


def serve_and_load(project: Settings, settings: TuneSettings, request: Request, config: ServingConfig, bar) -> list[dict]:
    """One TorchServe (or local Ray cluster) for `project`'s archive: warm-up, then each concurrency; always stopped."""
    label = config.name
    if config.server == "ray":
        from pipeline.serving.ray import server as ray_server

        info: serve.ServerInfo | RayInfo = ray_server.start(project, replicas=str(config.workers), auto_ports=True)
        stop = ray_server.stop
    else:
        info, stop = serve.start(project, auto_ports=True), serve.stop
    try:
        load(info, request, 4, WARMUP_S, settings.load_generator)  # JIT, connections, first batches
        bar.update(1)
        runs = []
        for c in settings.concurrency:
            bar.set_postfix_str(f"{label} c={c}")
            runs.append(load(info, request, c, settings.seconds, settings.load_generator))
            bar.update(1)
        return runs
    finally:
        stop(project)


def report_stem(variant: str | None, on: Server = "torchserve") -> str:
    return "-".join(["tune", *(["ray"] if on == "ray" else []), *([variant] if variant else [])])


def report_paths(layout: Layout, variant: str | None, on: Server = "torchserve") -> tuple[Path, Path, Path]:
    stem = report_stem(variant, on)
    return tuple(layout.reports / f"{stem}.{ext}" for ext in ("json", "md", "png"))  # type: ignore[return-value]


def write_report(report: dict, layout: Layout, variant: str | None, on: Server = "torchserve") -> tuple[Path, Path, Path]:
    """tune.json, tune.md and tune.png (the Pareto front) under reports/<model>/ (tune-ray.* for Ray)."""
    paths = report_paths(layout, variant, on)
    files.write_json(paths[0], report)
    files.write_text(paths[1], markdown(report))
    plot(report, paths[2])
    return paths


def _record(layout: Layout, settings: TuneSettings, report: dict, path: Path) -> None:
    """The manifest's tune record: what was measured, the goal, the choice, the report, the archive it went into."""
    key = tune_key(settings.variant)
    manifest = Manifest(layout.root, layout.model)  # read again: the package stage has just written its record
    archive_path, archive_rec = verified_archive(manifest, settings.variant, STAGE)
    model = manifest.records[settings.variant or ONNX]
    details = {
        "server": settings.on,
        "goal_p99_ms": settings.p99_ms,
        "met": report["chosen"] is not None,
        "chosen": report["chosen_config"],
        "closest": report["closest"],
        "ranked_at_concurrency": report["ranked_at_concurrency"],
        "configs_measured": len(report["table"]),
        "configs_met": len(report["met"]),
        "report": path.relative_to(layout.root).as_posix(),
        "archive": archive_path.relative_to(layout.root).as_posix() if report["chosen"] else None,
    }
    inputs = {"model": model.sha256, "archive": archive_rec.sha256}
    manifest.record(key, path, STAGE, inputs, report["settings"], report["seconds"], details)


def _server(s: dict) -> str:
    if s.get("on") == "ray":
        return "one local Ray Serve cluster (direct ingress, the load spread over the replicas' addresses)"
    return "one TorchServe"


def _legend(s: dict) -> str:
    if s.get("on") == "ray":
        return "`ray-bB-dD-rR-tT`: serve.batch of up to B gathered for at most D ms, R replicas, T ONNX Runtime threads each."
    return "`bB-dD-wW-tT`: batches of up to B gathered for at most D ms, W workers, T ONNX Runtime threads each."


def _ms(v: float | None) -> str:
    return "—" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.2f}"


def markdown(report: dict) -> str:
    """tune.md: the goal, the choice and why, and the whole table."""
    s = report["settings"]
    goal = report["goal_p99_ms"]
    concurrency = ", ".join(map(str, s["concurrency"]))
    lines = [
        f"# Tuning the serving config: {report['model']}{' (' + report['variant'] + ')' if report['variant'] else ''}",
        "",
        f"Goal: p99 ≤ {goal:g} ms at every concurrency ({concurrency} clients) with zero errors. "
        f"Load: {report['generator'] or 'none ran'}, {s['seconds']:g} s per run after {WARMUP_S:g} s of warm-up, {_server(s)} "
        f"per config. Ranked by requests/s at {report['ranked_at_concurrency']} clients. "
        f"{len(report['table'])} configs in {report['seconds']:.0f} s.",
        "",
    ]
    if report["chosen"]:
        archive = report["archive"]
        lines += [
            f"**Chosen: {report['chosen']}** — {report['why']}.",
            "",
            f"`{archive['path']}` was {'packaged again' if archive['repackaged'] else 'already packaged'} with it "
            f"(`python -m pipeline package {report['package_options']}` gives the same archive); serve it as measured with "
            f"`{report['serve_command']}`.",
        ]
    else:
        closest = next(r for r in report["table"] if r["config"] == report["closest"])
        lines += [
            f"**No config met p99 ≤ {goal:g} ms** at every concurrency with zero errors. The closest is **{report['closest']}**: "
            f"worst p99 {worst_p99(closest):.3g} ms, {errors(closest)} errors, {throughput(closest):,.0f} requests/s at "
            f"{report['ranked_at_concurrency']} clients. The archive was left as it was."
        ]
    lines += [
        "",
        f"Pareto front (worst p99 against requests/s, no errors): {', '.join(report['pareto']) or 'none'}. ![Pareto front](tune.png)",
        "",
        "## Every config",
        "",
        _legend(s),
        "",
        "| config | clients | req/s | p50 ms | p99 ms | errors | p99 met | config met |",
        "| --- | ---: | ---: | ---: | ---: | ---: | --- | --- |",
    ]
    met = set(report["met"])
    for row in report["table"]:
        verdict = "**chosen**" if row["config"] == report["chosen"] else ("yes" if row["config"] in met else "no")
        if row.get("failed"):
            lines.append(f"| {row['config']} | — | — | — | — | — | — | failed: {row['failed'].splitlines()[0]} |")
            continue
        for i, r in enumerate(row["runs"]):
            ok = "✓" if r["errors"] == 0 and r["p99_ms"] <= goal else "✗"
            lines.append(
                f"| {row['config'] if i == 0 else ''} | {r['concurrency']} | {r['requests_per_s']:,.0f} | {_ms(r['p50_ms'])} | "
                f"{_ms(r['p99_ms'])} | {r['errors']} | {ok} | {verdict if i == 0 else ''} |"
            )
    return "\n".join(lines) + "\n"


def plot(report: dict, path: Path) -> None:
    """Worst p99 against requests/s per config, the Pareto front, the goal, the choice."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in report["table"] if r["runs"] and math.isfinite(worst_p99(r))]
    fig, ax = plt.subplots(figsize=(7.5, 5))
    named = {*report["pareto"], report["chosen"] or report["closest"]}  # the rest as dots: 21 labels would hide each other
    for row in rows:
        color = "tab:green" if row["config"] in report["met"] else ("tab:red" if errors(row) else "tab:gray")
        ax.scatter(worst_p99(row), throughput(row), color=color, s=25, zorder=2)
        if row["config"] in named:
            ax.annotate(row["config"], (worst_p99(row), throughput(row)), fontsize=7, xytext=(4, 4), textcoords="offset points")
    by = {r["config"]: r for r in rows}
    front = [by[name] for name in report["pareto"] if name in by]
    if front:
        ax.plot([worst_p99(r) for r in front], [throughput(r) for r in front], "-", color="tab:blue", label="Pareto front", zorder=1)
    ax.axvline(report["goal_p99_ms"], color="black", linestyle="--", linewidth=1, label=f"goal p99 ≤ {report['goal_p99_ms']:g} ms")
    if report["chosen"] in by:
        c = by[report["chosen"]]
        ax.scatter(worst_p99(c), throughput(c), marker="*", s=200, color="gold", edgecolor="black", label=f"chosen {c['config']}", zorder=3)
    elif report["closest"] in by:
        c = by[report["closest"]]
        ax.scatter(
            worst_p99(c), throughput(c), marker="*", s=200, color="none", edgecolor="black", label=f"closest {c['config']}", zorder=3
        )
    ax.set_xscale("log")
    ax.set_xlabel("worst p99 over the concurrencies (ms, log)")
    ax.set_ylabel(f"requests/s at {report['ranked_at_concurrency']} clients")
    ax.set_title(f"{report['model']}: serving configs (green met the goal, red had errors, gray missed it)")
    ax.legend(fontsize=8, loc="best")
    ax.grid(True, alpha=0.3)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    files.write_bytes(path, buf.getvalue())


def console_summary(report: dict) -> str:
    """What the command prints: the choice, its p99 at each concurrency, where the report is."""
    row = next(r for r in report["table"] if r["config"] == report["chosen"])
    p99s = ", ".join(f"c={r['concurrency']} {r['p99_ms']:.2f} ms" for r in row["runs"])
    return "\n".join(
        [
            f"tune {report['model']}: {report['why']}",
            f"  p99      {p99s} (goal {report['goal_p99_ms']:g} ms)",
            f"  archive  {report['archive']['path']} {'packaged again' if report['archive']['repackaged'] else 'already had it'} "
            f"({report['package_options']})",
            f"  serve    {report['serve_command']}",
            f"  report   reports/{report['model']}/{report_stem(report['variant'], report['settings'].get('on', 'torchserve'))}.md",
        ]
    )
