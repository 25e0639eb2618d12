"""Prometheus metrics under the same names on TorchServe and on Ray Serve (`METRICS`; docs/operating.md has the table).

Every process that answers requests (a TorchServe worker, a Ray replica) records through a `Recorder`,
labelled with the model and the archive's version. The server starts those processes with
PROMETHEUS_MULTIPROC_DIR set to its metrics folder, so prometheus_client keeps their figures in files
there, and its `/metrics` endpoint gathers the folder (`exposition`): every worker's and replica's counts,
those of a process that has since died included, and the in-flight gauge of the live ones only.
Without that variable (a Ray replica on a cluster given by address), a process's figures are its own.
"""

from __future__ import annotations

import functools
import os
import re
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ENV = "PROMETHEUS_MULTIPROC_DIR"
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
LABELS = ("model", "version")
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)
CLIENT_GONE = 499  # the code a request is counted under when its client went away before its end (as nginx logs it)


@dataclass(frozen=True)
class Metric:
    """One metric as a scraper sees it."""

    name: str  # as exposed (a counter's with its _total)
    kind: str  # counter, gauge, histogram
    labels: tuple[str, ...]
    help: str


METRICS = (
    Metric("pipeline_requests_total", "counter", (*LABELS, "code"), "Requests the model's server answered, by HTTP status code."),
    Metric(
        "pipeline_request_duration_seconds",
        "histogram",
        LABELS,
        "Seconds from a request reaching the server's model code to its answer (a generation: to its last token).",
    ),
    Metric("pipeline_requests_in_flight", "gauge", LABELS, "Requests the model's processes are working on now."),
    Metric("pipeline_batch_size", "histogram", LABELS, "Requests in each batch the model ran (a generation: streams in each decode step)."),
    Metric("pipeline_generated_tokens_total", "counter", LABELS, "Tokens a generation model generated."),
    Metric("pipeline_time_to_first_token_seconds", "histogram", LABELS, "Seconds from a generation request's arrival to its first token."),
)
NAMES = frozenset(m.name for m in METRICS)


@functools.cache
def _families() -> dict[str, Any]:
    """The process's metric objects, made once (prometheus_client registers each name once per process)."""
    from prometheus_client import Counter, Gauge, Histogram, disable_created_metrics

    disable_created_metrics()  # no *_created samples: a process's own registry exposes what the multiprocess folder does

    def help_of(name: str) -> str:
        return next(m.help for m in METRICS if m.name == name)

    return {
        "requests": Counter("pipeline_requests", help_of("pipeline_requests_total"), [*LABELS, "code"]),
        "duration": Histogram(
            "pipeline_request_duration_seconds", help_of("pipeline_request_duration_seconds"), LABELS, buckets=LATENCY_BUCKETS
        ),
        # livesum: the folder's gauge is the sum over live processes, so a killed worker's requests leave it.
        "in_flight": Gauge("pipeline_requests_in_flight", help_of("pipeline_requests_in_flight"), LABELS, multiprocess_mode="livesum"),
        "batch": Histogram("pipeline_batch_size", help_of("pipeline_batch_size"), LABELS, buckets=BATCH_BUCKETS),
        "tokens": Counter("pipeline_generated_tokens", help_of("pipeline_generated_tokens_total"), LABELS),
        "first_token": Histogram(
            "pipeline_time_to_first_token_seconds", help_of("pipeline_time_to_first_token_seconds"), LABELS, buckets=LATENCY_BUCKETS
        ),
    }


class Recorder:
    """What one model's server records, labelled with the model and the archive's version."""

    def __init__(self, model: str, version: str):
        families = _families()
        self.model, self.version = model, version
        self._requests = families["requests"]
        self.duration = families["duration"].labels(model, version)
        self.in_flight = families["in_flight"].labels(model, version)
        self.batch = families["batch"].labels(model, version)
        self.tokens = families["tokens"].labels(model, version)
        self.first_token = families["first_token"].labels(model, version)

    def answered(self, code: int, seconds: float | None = None) -> None:
        """One request answered with `code`; its duration where it reached the model."""
        self._requests.labels(self.model, self.version, str(code)).inc()
        if seconds is not None:
            self.duration.observe(seconds)

    @contextmanager
    def working(self, requests: int) -> Iterator[None]:
        """`requests` requests in flight while the block runs."""
        self.in_flight.inc(requests)
        try:
            yield
        finally:
            self.in_flight.dec(requests)


def folder_from_env() -> Path | None:
    value = os.environ.get(ENV)
    return Path(value) if value else None


def prepare(folder: Path) -> dict[str, str]:
    """An empty metrics folder (0700) for a server about to start its processes; the environment they need."""
    folder.mkdir(parents=True, exist_ok=True)
    folder.chmod(0o700)
    for old in folder.glob("*.db"):  # a previous server's figures: this one starts from zero
        old.unlink()
    return {ENV: str(folder)}


_FILE = re.compile(r"_(\d+)\.db$")


def exposition(folder: Path | None = None) -> bytes:
    """The Prometheus text of every process recording into `folder` (None: this process's own)."""
    from prometheus_client import REGISTRY, CollectorRegistry, generate_latest, multiprocess

    if folder is None:
        return generate_latest(REGISTRY)
    import psutil

    for path in folder.glob("gauge_live*.db"):  # a dead process's in-flight requests are no longer in flight
        found = _FILE.search(path.name)
        if found and not psutil.pid_exists(int(found.group(1))):
            multiprocess.mark_process_dead(int(found.group(1)), str(folder))
    registry = CollectorRegistry()
    multiprocess.MultiProcessCollector(registry, path=str(folder))
    return generate_latest(registry)


def samples(text: bytes | str) -> dict[tuple[str, frozenset], float]:
    """(sample name, its labels) -> value, from Prometheus text (as a scraper parses it)."""
    from prometheus_client.parser import text_string_to_metric_families

    out = {}
    for family in text_string_to_metric_families(text.decode() if isinstance(text, bytes) else text):
        for sample in family.samples:
            out[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return out


def in_flight(folder: Path, model: str, version: str) -> float:
    """Requests the live processes recording into `folder` are working on for this model's version."""
    key = ("pipeline_requests_in_flight", frozenset({("model", model), ("version", version)}))
    return samples(exposition(folder)).get(key, 0.0)


def serve(folder: Path, socket_path: Path) -> None:
    """Answer GET /metrics with `exposition(folder)` on a Unix socket (0600) until killed.

    TorchServe's server runs this beside its workers, behind the proxy, which checks the token and bounds what a
    client may send or hold; only the proxy connects here.
    """
    import socketserver
    from http.server import BaseHTTPRequestHandler

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_GET(self) -> None:
            if self.path.split("?", 1)[0] == "/metrics":
                status, kind, body = 200, CONTENT_TYPE, exposition(folder)
            else:
                status, kind = 404, "application/json"
                body = b'{"code": 404, "type": "NotFound", "message": "this port serves GET /metrics only"}'
            self.send_response(status)
            self.send_header("Content-Type", kind)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def address_string(self) -> str:
            return "proxy"

        def log_message(self, format: str, *args: Any) -> None:
            pass  # the proxy's access log has every request

    class Server(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
        daemon_threads = True

    socket_path.unlink(missing_ok=True)
    old = os.umask(0o177)
    try:
        server = Server(str(socket_path), Handler)
    finally:
        os.umask(old)
    with server:
        server.serve_forever()


if __name__ == "__main__":
    import sys

    serve(Path(sys.argv[1]), Path(sys.argv[2]))
