"""The served half of the benchmark: a real TorchServe (and Ray Serve), locust load, the servers' own metrics.

For each serving config (the archive's default and a tuned one) the model is packaged
with that config into a private project folder, served on free loopback ports, and
swept over client concurrency (wrk, or locust). `/ping` on the same server under the same
load is the floor. What is sent is the model's real input where it takes one (a 640 x 480
JPEG, a sentence: `pipeline.bench.inputs`), and on the tuned config the same tensors again
as a binary Open Inference Protocol request, so decoding or tokenizing is seen end to end. TorchServe's per-request metrics (queue time and total time in the
frontend, the handler's time per batch in the worker) are read from its metrics logs
for exactly the span of each run. With `--served ray` the same sweep runs against the
same archive on Ray Serve (a local cluster): 1 and 2 replicas at their own addresses
(direct ingress, the load spread over them), and 1 through Serve's proxy; the floor is
`/v2/health/live` on the same route.
"""

from __future__ import annotations

import re
import shutil
import tempfile
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.artifacts.manifest import Manifest
from pipeline.artifacts.names import MAR
from pipeline.bench import handler_time
from pipeline.bench.loadgen import measure
from pipeline.errors import PipelineError
from pipeline.serving.common.client import http
from pipeline.serving.common.samples import Request, sample_requests
from pipeline.serving.ray.server import RayInfo
from pipeline.serving.torchserve import server as serve
from pipeline.settings import Layout, Settings
from pipeline.stages import package

PING_SECONDS = 2.0
# Serving configs compared: what goes into the archive's model-config.yaml (batching,
# workers) and what changes in the server's config.properties.
# - "default": stock TorchServe: an archive without a model config (batchSize 1, one
#   worker) on a server that logs five metric lines per request, synchronously.
# - "tuned": what this project ships (the archive's model-config.yaml and
#   pipeline/serving/torchserve/torchserve.properties): batches of up to 8 gathered for at most 1 ms,
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
# Each replica count at the replicas' own addresses (direct ingress; the load spread over
# them), and one replica again through Serve's proxy, to show what the proxy costs.
RAY_REPLICAS = {"ray-1": 1, "ray-2": 2}
RAY_PROXY = "ray-1-proxy"
RAY_COMPARISONS = (("default", "tuned"), ("tuned", "ray-1"), ("tuned", "ray-2"), ("ray-1-proxy", "ray-1"))
_METRIC = re.compile(r"(ts_inference_latency_microseconds|ts_queue_latency_microseconds)\.Microseconds:([0-9.]+)")
_PREDICTION = re.compile(r"PredictionTime\.ms:([0-9.]+)")


def steps(settings, spec) -> int:
    if settings.served == "off":
        return 0
    configs = {"running": 1, "ray": len(RAY_TORCHSERVE_CONFIGS) + len(RAY_REPLICAS) + 1}.get(settings.served, len(SERVING_CONFIGS))
    binary = len(settings.concurrency) if spec.image_input is not None or spec.text_input is not None else 0
    return configs * len(settings.concurrency) * 2 + binary


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
    """Counter deltas from TorchServe's own metrics API since `mark()` (metrics_mode=prometheus: sums, so means only).
    It listens on a Unix socket in the server's run folder; the metrics port serves the pipeline's metrics instead."""

    socket: Path
    start: dict[str, float]

    @staticmethod
    def scrape(socket: Path) -> dict[str, float]:
        status, body = http("GET", "http://localhost/metrics", timeout=10, unix_socket=socket)
        if status != 200:
            return {}
        out: dict[str, float] = {}
        for name, value in _PROM_LINE.findall(body.decode("utf-8", "replace")):
            out[name] = out.get(name, 0.0) + float(value)
        return out

    @classmethod
    def mark(cls, socket: Path) -> PrometheusWindow:
        return cls(socket, cls.scrape(socket))

    def breakdown(self) -> dict:
        end = self.scrape(self.socket)

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
        return PrometheusWindow.mark(serve.api_socket(Path(info.run_dir), "metrics"))
    return LogWindow.mark(Path(info.run_dir) / "logs")


def copy_project(layout: Layout, folder: Path) -> None:
    """The model's verified artifacts and gate reports copied into `folder`, a private project
    that can be packaged and served without touching the user's archive (or measurements)."""
    src = layout.root
    (folder / "artifacts").mkdir(parents=True)
    shutil.copytree(src / "artifacts" / layout.model, folder / "artifacts" / layout.model)
    shutil.copytree(src / "reports" / layout.model, folder / "reports" / layout.model, ignore=shutil.ignore_patterns("latency*", "tune*"))


def project_for(config: dict, settings, layout: Layout, folder: Path) -> Settings:
    """A private project folder whose archive carries `config`: the user's archive is untouched."""
    copy_project(layout, folder)
    project = Settings(model=settings.model, root=folder, force=True, **config)
    package.run(project)
    return project


def replica_spread(info: serve.ServerInfo | RayInfo, url: str) -> list[str]:
    """`url` (on `info.inference`) at each other replica's own address, where Ray serves at several."""
    if not isinstance(info, RayInfo) or info.inference not in info.replica_urls:
        return []
    return [url.replace(info.inference, u, 1) for u in info.replica_urls if u != info.inference]


def load(info: serve.ServerInfo | RayInfo, request: Request, concurrency: int, seconds: float, generator: str = "auto") -> dict:
    """`request` from `concurrency` closed-loop clients for `seconds` against a running server (wrk, or locust);
    on Ray at several replica addresses, spread over them all."""
    headers = {"Authorization": f"Bearer {info.token('inference')}", **dict(request.headers)}
    url = request.url(info)
    return measure(
        url,
        request.body,
        concurrency,
        seconds,
        headers=headers,
        content_type=request.content_type,
        generator=generator,
        spread=replica_spread(info, url),
    )


def _sweep(
    info: serve.ServerInfo | RayInfo,
    properties: dict[str, str] | None,
    settings,
    request: Request,
    bar,
    label: str,
    alongside: Request | None = None,
) -> tuple[list[dict], list[dict], list[dict]]:
    """Load at each concurrency, then `alongside` (the same tensors in binary) at the same
    concurrency, then the floor; TorchServe's metrics, where there are some, for `request`'s runs.
    Taking turns at each concurrency keeps a server warming up over the sweep from favouring either."""
    headers = {"Authorization": f"Bearer {info.token('inference')}"}
    ping = f"{info.inference}/v2/health/live" if isinstance(info, RayInfo) else f"{info.inference}/ping"
    generator = settings.load_generator

    runs, floors, binary_runs = [], [], []
    for each in (request, alongside) if alongside else (request,):
        load(info, each, 4, 1.0, generator)  # warm-up: first requests pay for JIT and connection setup on both sides
    for c in settings.concurrency:
        bar.set_postfix_str(f"served {label} c={c}")
        window = metrics_window(info, properties) if isinstance(info, serve.ServerInfo) and properties is not None else None
        result = load(info, request, c, settings.served_seconds, generator)
        runs.append({**result, **({"torchserve_metrics": window.breakdown()} if window else {})})
        bar.update(1)
        if alongside is not None:
            bar.set_postfix_str(f"served {label} {alongside.kind} c={c}")
            binary_runs.append(load(info, alongside, c, settings.served_seconds, generator))
            bar.update(1)
        bar.set_postfix_str(f"served {label} floor c={c}")
        floor_s = min(PING_SECONDS, settings.served_seconds)
        floors.append(measure(ping, "", c, floor_s, headers=headers, method="GET", generator=generator, spread=replica_spread(info, ping)))
        bar.update(1)
    for r, f in zip(runs, floors):
        r["ratio_to_ping_p50"] = r["p50_ms"] / f["p50_ms"] if f["p50_ms"] > 0 else None
    return runs, floors, binary_runs


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
    """Sweep concurrency against each serving config; compare default with tuned; real inputs against binary tensors."""
    request, binary = sample_requests(spec)
    sent = {
        "request": request.describe(),
        **({"request_body": request.body.decode()} if request.content_type == "application/json" else {}),
    }
    configs: list[dict] = []
    if settings.served == "running":
        info = serve.load_info(layout)
        if info is None or not info.processes():
            raise PipelineError(
                "bench",
                f"--served running: no {spec.name} server is running",
                f"start one with python -m pipeline serve --model {settings.model}, or use --served auto",
            )
        properties = serve.read_properties(Path(info.run_dir) / "config.properties")
        runs, floors, others = _sweep(info, properties, settings, request, bar, "running", binary)
        configs.append({"name": "running", "server_config": _describe(info), "runs": runs, "ping": floors})
        return {**sent, "configs": configs, "comparisons": [], "inputs": inputs_compared(runs, others, request, binary)}
    names = RAY_TORCHSERVE_CONFIGS if settings.served == "ray" else tuple(SERVING_CONFIGS)
    binary_runs: list[dict] = []
    for name in names:
        config = SERVING_CONFIGS[name]
        with tempfile.TemporaryDirectory(prefix=f"bench-serve-{name}-") as tmp:
            project = project_for(config["archive"], settings, layout, Path(tmp))
            info = serve.start(project, auto_ports=True, properties=config["server"])
            try:
                server_config = _describe(info)
                # On the tuned config, the same tensors already preprocessed, in turns with the real input.
                runs, floors, others = _sweep(info, config["server"], settings, request, bar, name, binary if name == "tuned" else None)
                binary_runs = others or binary_runs
            finally:
                serve.stop(project)
        configs.append(
            {"name": name, "server": "torchserve", "changes": config, "server_config": server_config, "runs": runs, "ping": floors}
        )
    if settings.served == "ray":
        configs += [c for name, replicas in RAY_REPLICAS.items() for c in _ray_configs(name, replicas, settings, layout, request, bar)]
    pairs = RAY_COMPARISONS if settings.served == "ray" else COMPARISONS
    comparisons = [c for c in (compare(configs, base, other) for base, other in pairs) if c]
    mar, _ = Manifest(layout.root, layout.model).verified(MAR, "bench")
    handler = handler_time.measure_in_child(mar, request.body, preprocessed=binary is not None)
    tuned = next(c["runs"] for c in configs if c["name"] == "tuned")
    return {
        **sent,
        "configs": configs,
        "comparisons": comparisons,
        "inputs": inputs_compared(tuned, binary_runs, request, binary),
        "handler": handler,
        "profile": profile(configs, handler),
    }


def inputs_compared(runs: list[dict], binary_runs: list[dict], request: Request, binary: Request | None) -> dict | None:
    """The real input (a JPEG, a text) against the same tensors sent in binary, per concurrency, on one server."""
    if binary is None or not binary_runs:
        return None
    by = {r["concurrency"]: r for r in binary_runs}
    rows = []
    for r in runs:
        b = by.get(r["concurrency"])
        if b is None:
            continue
        rows.append(
            {
                "concurrency": r["concurrency"],
                "p50_ms": r["p50_ms"],
                "binary_p50_ms": b["p50_ms"],
                "p50_ratio": r["p50_ms"] / b["p50_ms"] if b["p50_ms"] > 0 else None,
                "requests_per_s": r["requests_per_s"],
                "binary_requests_per_s": b["requests_per_s"],
                "errors": r["errors"] + b["errors"],
            }
        )
    return {"request": request.describe(), "binary": binary.describe(), "binary_runs": binary_runs, "per_concurrency": rows}


def _ray_configs(name: str, replicas: int, settings, layout: Layout, request: Request, bar) -> list[dict]:
    """The same sweep against the archive on Ray Serve (a local cluster of its own), at the
    replicas' own addresses; with one replica, again through Serve's proxy on the same cluster."""
    from pipeline.serving.ray import server as ray_server

    archive = Settings()  # the archive's own model config: what each replica batches with
    server_config = {"replicas": replicas, "batchSize": archive.serve_batch_size, "maxBatchDelay": archive.serve_max_batch_delay_ms}
    configs = []
    with tempfile.TemporaryDirectory(prefix=f"bench-{name}-") as tmp:
        project = project_for({}, settings, layout, Path(tmp))
        info = ray_server.start(project, replicas=str(replicas), auto_ports=True)
        try:
            ways = [(name, info, "direct ingress" if info.replica_urls else "Serve's proxy")]
            if replicas == 1:
                ways.append((RAY_PROXY, replace(info, inference=info.proxy, replica_urls=()), "Serve's proxy"))
            for label, at, route in ways:
                runs, floors, _ = _sweep(at, None, settings, request, bar, label)
                config = {**server_config, "route": route, "addresses": len(at.replica_urls) or 1}
                configs.append({"name": label, "server": "ray", "server_config": config, "runs": runs, "ping": floors})
        finally:
            ray_server.stop(project)
    return configs


def compare(configs: list[dict], base: str, other: str, concurrency: int = 16) -> dict | None:
    """`other` against `base` at one concurrency (16, or the largest run): the requests/s ratio,
    both p99s and the errors; and at every concurrency, which served more. Facts only: what a
    config should reach is for the reader (docs/benchmark.md) to hold it to."""
    by = {c["name"]: {r["concurrency"]: r for r in c["runs"]} for c in configs}
    if base not in by or other not in by:
        return None
    if concurrency not in by[base]:
        concurrency = max(by[base])
    d, t = by[base][concurrency], by[other][concurrency]
    per_concurrency = {}
    for c in sorted(by[base]):
        dc, tc = by[base][c], by[other].get(c)
        if tc:
            per_concurrency[str(c)] = {
                "winner_rps": other if tc["requests_per_s"] > dc["requests_per_s"] else base,
                "rps_ratio": tc["requests_per_s"] / dc["requests_per_s"] if dc["requests_per_s"] else None,
                "p99_ratio": tc["p99_ms"] / dc["p99_ms"] if dc["p99_ms"] else None,
            }
    return {
        "base": base,
        "other": other,
        "concurrency": concurrency,
        "rps_ratio": t["requests_per_s"] / d["requests_per_s"] if d["requests_per_s"] else None,
        "p99_base_ms": d["p99_ms"],
        "p99_other_ms": t["p99_ms"],
        "errors": d["errors"] + t["errors"],
        "per_concurrency": per_concurrency,
    }
