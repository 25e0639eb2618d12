"""The served half of the benchmark: a real TorchServe (and Ray Serve), locust load, the servers' own metrics.

For each serving config (the archive's default and a tuned one) the model is packaged
with that config into a private project folder, served on free loopback ports, and
swept over client concurrency with locust. `/ping` on the same server under the same
load is the floor. TorchServe's per-request metrics (queue time and total time in the
frontend, the handler's time per batch in the worker) are read from its metrics logs
for exactly the span of each run. With `--served ray` the same sweep runs against the
same archive on Ray Serve (a local cluster, 1 and 2 replicas), whose floor is its
`/v2/health/live` route through the same proxy.
"""

from __future__ import annotations

import json
import re
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.artifacts.manifest import Manifest
from pipeline.artifacts.names import MAR
from pipeline.bench import handler_time
from pipeline.bench.loadgen import measure
from pipeline.errors import PipelineError
from pipeline.serving import server as serve
from pipeline.serving.client import http
from pipeline.serving.ray_server import RayInfo
from pipeline.settings import Layout, Settings
from pipeline.stages import package

PING_SECONDS = 2.0
# Serving configs compared: what goes into the archive's model-config.yaml (batching,
# workers) and what changes in the server's config.properties.
# - "default": stock TorchServe: an archive without a model config (batchSize 1, one
#   worker) on a server that logs five metric lines per request, synchronously.
# - "tuned": what this project ships (the archive's model-config.yaml and
#   config/torchserve.properties): batches of up to 8 gathered for at most 1 ms,
#   metrics as counters, asynchronous logging.
# - "tuned-large-batch": batches of up to 32 gathered for up to 2 ms, to show where
#   larger batches pay off (many clients) and where the wait costs (few).
# One worker in each: on a 2-core machine the other core is busy with the frontend
# and the load generator, and a second worker measured slower at 16 and 64 clients.
SERVING_CONFIGS: dict[str, dict[str, dict[str, Any]]] = {
    "default": {
        "archive": {"serve_batch_size": 1, "serve_max_batch_delay_ms": 100, "serve_workers": 1},
        "server": {"metrics_mode": "log", "async_logging": "false"},
    },
    "tuned": {"archive": {}, "server": {}},
    "tuned-large-batch": {"archive": {"serve_batch_size": 32, "serve_max_batch_delay_ms": 2}, "server": {}},
}
COMPARISONS = (("default", "tuned"), ("tuned", "tuned-large-batch"))
# --served ray: TorchServe's default and tuned configs beside Ray Serve's replica counts.
RAY_TORCHSERVE_CONFIGS = ("default", "tuned")
RAY_REPLICAS = {"ray-1": 1, "ray-2": 2}
RAY_COMPARISONS = (("default", "tuned"), ("tuned", "ray-1"), ("tuned", "ray-2"))
# What each comparison must reach at 16 clients (requests/s ratio, other over base).
GOALS = {("default", "tuned"): 2.0, ("tuned", "ray-1"): 0.8}
_METRIC = re.compile(r"(ts_inference_latency_microseconds|ts_queue_latency_microseconds)\.Microseconds:([0-9.]+)")
_PREDICTION = re.compile(r"PredictionTime\.ms:([0-9.]+)")


def steps(settings) -> int:
    if settings.served == "off":
        return 0
    configs = {"running": 1, "ray": len(RAY_TORCHSERVE_CONFIGS) + len(RAY_REPLICAS)}.get(settings.served, len(SERVING_CONFIGS))
    return configs * len(settings.concurrency) * 2


def _pct(a: np.ndarray) -> dict:
    if not a.size:
        return {"n": 0}
    p50, p99 = np.percentile(a, (50, 99))
    return {"n": int(a.size), "mean_ms": float(a.mean()), "p50_ms": float(p50), "p99_ms": float(p99)}


def _share(queue_ms: float, total_ms: float) -> float | None:
    return queue_ms / total_ms if total_ms > 0 else None


@dataclass
class LogWindow:
    """New lines in TorchServe's metrics logs since `mark()` (metrics_mode=log: one line per request)."""

    logs: Path
    offsets: dict[str, int]

    @classmethod
    def mark(cls, logs: Path) -> LogWindow:
        names = ("ts_metrics.log", "model_metrics.log")
        return cls(logs, {n: (logs / n).stat().st_size if (logs / n).exists() else 0 for n in names})

    def read(self, name: str) -> str:
        path = self.logs / name
        if not path.exists():
            return ""
        with open(path, "rb") as f:
            f.seek(self.offsets[name])
            return f.read().decode("utf-8", "replace")

    def breakdown(self) -> dict:
        """Queue vs model time per request, as TorchServe measured them."""
        values: dict[str, list[float]] = {"ts_inference_latency_microseconds": [], "ts_queue_latency_microseconds": []}
        for name, value in _METRIC.findall(self.read("ts_metrics.log")):
            values[name].append(float(value) / 1e3)
        handler = [float(v) for v in _PREDICTION.findall(self.read("model_metrics.log"))]
        total, queue = np.array(values["ts_inference_latency_microseconds"]), np.array(values["ts_queue_latency_microseconds"])
        return {
            "source": "metrics logs, per request",
            "frontend_total": _pct(total),
            "queue": _pct(queue),
            "handler_per_batch": _pct(np.array(handler)),
            "queue_share_of_total": _share(float(queue.sum()), float(total.sum())) if total.size else None,
        }


_PROM_LINE = re.compile(r"^(\w+)\{[^}]*\}\s+([0-9.eE+-]+)$", re.M)


@dataclass
class PrometheusWindow:
    """Counter deltas from the metrics API since `mark()` (metrics_mode=prometheus: sums, so means only)."""

    url: str
    start: dict[str, float]

    @staticmethod
    def scrape(url: str) -> dict[str, float]:
        status, body = http("GET", url, timeout=10)
        if status != 200:
            return {}
        out: dict[str, float] = {}
        for name, value in _PROM_LINE.findall(body.decode("utf-8", "replace")):
            out[name] = out.get(name, 0.0) + float(value)
        return out

    @classmethod
    def mark(cls, url: str) -> PrometheusWindow:
        return cls(url, cls.scrape(url))

    def breakdown(self) -> dict:
        end = self.scrape(self.url)

        def delta(name: str) -> float:
            return end.get(name, 0.0) - self.start.get(name, 0.0)

        n = int(delta("ts_inference_requests_total"))
        total, queue = delta("ts_inference_latency_microseconds") / 1e3, delta("ts_queue_latency_microseconds") / 1e3
        mean = (lambda v: {"n": n, "mean_ms": v / n}) if n else (lambda v: {"n": 0})
        handler = end.get("PredictionTime")
        return {
            "source": "metrics API counters (queue and total are means over the run; handler time is the last batch's)",
            "frontend_total": mean(total),
            "queue": mean(queue),
            "handler_per_batch": {"n": 1, "last_ms": handler} if handler is not None else {"n": 0},
            "queue_share_of_total": _share(queue, total) if n else None,
        }


def metrics_window(info: serve.ServerInfo, properties: dict[str, str]):
    mode = properties.get("metrics_mode", serve.shipped_properties().get("metrics_mode", "log"))
    if mode == "prometheus":
        return PrometheusWindow.mark(f"{info.metrics}/metrics")
    return LogWindow.mark(Path(info.run_dir) / "logs")


def project_for(config: dict, settings, layout: Layout, folder: Path) -> Settings:
    """A private project folder whose archive carries `config`: the user's archive is untouched."""
    src = layout.root
    (folder / "artifacts").mkdir(parents=True)
    shutil.copytree(src / "artifacts" / layout.model, folder / "artifacts" / layout.model)
    shutil.copytree(src / "reports" / layout.model, folder / "reports" / layout.model, ignore=shutil.ignore_patterns("latency*"))
    project = Settings(model=settings.model, root=folder, force=True, **config)
    package.run(project)
    return project


def _sweep(
    info: serve.ServerInfo | RayInfo, properties: dict[str, str] | None, settings, body: str, bar, label: str
) -> tuple[list[dict], list[dict]]:
    """Load at each concurrency, then the floor at the same concurrency; TorchServe's metrics where there are some."""
    headers = {"Authorization": f"Bearer {info.token('inference')}"}
    floor = f"{info.inference}/v2/health/live" if isinstance(info, RayInfo) else f"{info.inference}/ping"
    runs, floors = [], []
    generator = settings.load_generator
    # Warm-up: first requests pay for JIT and connection setup on both sides.
    measure(info.predictions_url, body, 4, 1.0, headers=headers, generator=generator)
    for c in settings.concurrency:
        bar.set_postfix_str(f"served {label} c={c}")
        window = metrics_window(info, properties) if isinstance(info, serve.ServerInfo) and properties is not None else None
        result = measure(info.predictions_url, body, c, settings.served_seconds, headers=headers, generator=generator)
        runs.append({**result, **({"torchserve_metrics": window.breakdown()} if window else {})})
        bar.update(1)
        bar.set_postfix_str(f"served {label} floor c={c}")
        ping = measure(floor, "", c, min(PING_SECONDS, settings.served_seconds), headers=headers, method="GET", generator=generator)
        floors.append(ping)
        bar.update(1)
    for r, f in zip(runs, floors):
        r["ratio_to_ping_p50"] = r["p50_ms"] / f["p50_ms"] if f["p50_ms"] > 0 else None
    return runs, floors


def _describe(info: serve.ServerInfo) -> dict:
    described = info.describe() or [{}]
    d = described[0]
    return {k: d.get(k) for k in ("batchSize", "maxBatchDelay", "minWorkers", "maxWorkers", "responseTimeout")}


def profile(configs: list[dict], handler: dict, name: str = "tuned") -> list[dict]:
    """Where a request's time goes on `name`, per concurrency (means, ms): client to frontend and back,
    TorchServe's queue, the handler (timed in process), and the rest (batch assembly, frontend to
    worker and back, the worker's protocol, metrics and logs)."""
    config = next((c for c in configs if c["name"] == name), None)
    if config is None:
        return []
    rows = []
    per_request = handler["us_per_request"]
    for r in config["runs"]:
        m = r.get("torchserve_metrics", {})
        total, queue = m.get("frontend_total", {}).get("mean_ms"), m.get("queue", {}).get("mean_ms")
        if total is None or queue is None:
            continue
        batch = "1" if r["concurrency"] == 1 else max(per_request, key=int)
        handler_ms = per_request[batch] / 1e3
        rows.append(
            {
                "concurrency": r["concurrency"],
                "client_mean_ms": r["mean_ms"],
                "client_to_frontend_and_back_ms": max(r["mean_ms"] - total, 0.0),
                "queue_ms": queue,
                "handler_ms": handler_ms,
                "handler_batch": int(batch),
                "rest_ms": max(total - queue - handler_ms, 0.0),
            }
        )
    return rows


def run(settings, spec, layout: Layout, bar) -> dict:
    """Sweep concurrency against each serving config; compare default with tuned."""
    body = json.dumps(spec.example_request or _first_row(spec))
    configs: list[dict] = []
    if settings.served == "running":
        info = serve.load_info(layout)
        if info is None or not info.processes():
            raise PipelineError(
                "bench",
                f"--served running: no {spec.name} server is running",
                f"start one with make serve MODEL={settings.model}, or use --served auto",
            )
        properties = serve.read_properties(Path(info.run_dir) / "config.properties")
        runs, floors = _sweep(info, properties, settings, body, bar, "running")
        configs.append({"name": "running", "server_config": _describe(info), "runs": runs, "ping": floors})
        return {"request_body": body, "configs": configs, "comparisons": []}
    names = RAY_TORCHSERVE_CONFIGS if settings.served == "ray" else tuple(SERVING_CONFIGS)
    for name in names:
        config = SERVING_CONFIGS[name]
        with tempfile.TemporaryDirectory(prefix=f"bench-serve-{name}-") as tmp:
            project = project_for(config["archive"], settings, layout, Path(tmp))
            info = serve.start(project, auto_ports=True, properties=config["server"])
            try:
                server_config = _describe(info)
                runs, floors = _sweep(info, config["server"], settings, body, bar, name)
            finally:
                serve.stop(project)
        configs.append(
            {"name": name, "server": "torchserve", "changes": config, "server_config": server_config, "runs": runs, "ping": floors}
        )
    if settings.served == "ray":
        configs += [_ray_config(name, replicas, settings, layout, body, bar) for name, replicas in RAY_REPLICAS.items()]
    pairs = RAY_COMPARISONS if settings.served == "ray" else COMPARISONS
    comparisons = [c for c in (compare(configs, base, other) for base, other in pairs) if c]
    mar, _ = Manifest(layout.root, layout.model).verified(MAR, "bench")
    handler = handler_time.measure_in_child(mar, body)
    return {"request_body": body, "configs": configs, "comparisons": comparisons, "handler": handler, "profile": profile(configs, handler)}


def _ray_config(name: str, replicas: int, settings, layout: Layout, body: str, bar) -> dict:
    """The same sweep against the archive on Ray Serve (a local cluster of its own)."""
    from pipeline.serving import ray_server

    with tempfile.TemporaryDirectory(prefix=f"bench-{name}-") as tmp:
        project = project_for({}, settings, layout, Path(tmp))
        info = ray_server.start(project, replicas=str(replicas), auto_ports=True)
        try:
            runs, floors = _sweep(info, None, settings, body, bar, name)
        finally:
            ray_server.stop(project)
    archive = Settings()  # the archive's own model config: what each replica batches with
    server_config = {"replicas": replicas, "batchSize": archive.serve_batch_size, "maxBatchDelay": archive.serve_max_batch_delay_ms}
    return {"name": name, "server": "ray", "server_config": server_config, "runs": runs, "ping": floors}


def compare(configs: list[dict], base: str, other: str, concurrency: int = 16) -> dict | None:
    """`other` vs `base` at one concurrency: requests/s ratio against its goal, p99 and errors; and who wins where.

    Against a goal of 1 or more `other` must also keep p99 no worse (it claims to be better);
    under 1 (Ray Serve's 0.8× of TorchServe) only the throughput and zero errors count.
    """
    by = {c["name"]: {r["concurrency"]: r for r in c["runs"]} for c in configs}
    if base not in by or other not in by:
        return None
    if concurrency not in by[base]:
        concurrency = max(by[base])
    d, t = by[base][concurrency], by[other][concurrency]
    ratio = t["requests_per_s"] / d["requests_per_s"] if d["requests_per_s"] else None
    per_concurrency = {}
    for c in sorted(by[base]):
        dc, tc = by[base][c], by[other].get(c)
        if tc:
            per_concurrency[str(c)] = {
                "winner_rps": other if tc["requests_per_s"] > dc["requests_per_s"] else base,
                "rps_ratio": tc["requests_per_s"] / dc["requests_per_s"] if dc["requests_per_s"] else None,
                "p99_ratio": tc["p99_ms"] / dc["p99_ms"] if dc["p99_ms"] else None,
            }
    goal = GOALS.get((base, other))
    errors = d["errors"] + t["errors"]
    p99_ok = t["p99_ms"] <= d["p99_ms"] or (goal is not None and goal < 1)
    return {
        "base": base,
        "other": other,
        "concurrency": concurrency,
        "rps_ratio": ratio,
        "goal": goal,
        "p99_base_ms": d["p99_ms"],
        "p99_other_ms": t["p99_ms"],
        "errors": errors,
        "met": None if goal is None else bool(ratio and ratio >= goal and p99_ok and errors == 0),
        "per_concurrency": per_concurrency,
    }


def _first_row(spec) -> dict:
    feed = spec.sample_inputs(1, np.random.default_rng(0))
    return {name: value[0].tolist() for name, value in feed.items()}
