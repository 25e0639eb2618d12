"""Load generation against an HTTP endpoint with locust, in a child process.

`run_load` starts `pipeline.bench.locust_worker` (locust used as a library), waits for it
within a hard deadline, and returns every request's latency and status code.
Only loopback targets are allowed: load is never sent to another machine.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import numpy as np

from pipeline.errors import PipelineError

PERCENTILES = (50, 90, 99, 99.9)
LOOPBACK = {"127.0.0.1", "localhost", "::1"}


@dataclass(frozen=True)
class LoadResult:
    """What one load run did: per-request latency (ms) and status (0 = no response)."""

    concurrency: int
    seconds: float
    latency_ms: np.ndarray
    status: np.ndarray

    @property
    def requests(self) -> int:
        return int(self.status.size)

    @property
    def errors(self) -> int:
        return int(np.count_nonzero(self.status != 200))

    def status_counts(self) -> dict[str, int]:
        codes, counts = np.unique(self.status, return_counts=True)
        return {str(int(c)): int(n) for c, n in zip(codes, counts)}

    def summary(self) -> dict:
        ok = self.latency_ms[self.status == 200]
        pct = np.percentile(ok, PERCENTILES) if ok.size else [float("nan")] * len(PERCENTILES)
        return {
            "concurrency": self.concurrency,
            "requests": self.requests,
            "errors": self.errors,
            "status": self.status_counts(),
            "seconds": self.seconds,
            "requests_per_s": self.requests / self.seconds if self.seconds > 0 else 0.0,
            **{f"p{str(p).replace('.', '')}_ms": float(v) for p, v in zip(PERCENTILES, pct)},
            "mean_ms": float(ok.mean()) if ok.size else float("nan"),
        }


def run_load(
    url: str,
    bodies: list[str],
    concurrency: int,
    duration_s: float,
    *,
    max_requests: int = 0,
    headers: dict[str, str] | None = None,
    method: str = "POST",
    timeout_s: float = 30.0,
) -> LoadResult:
    """Closed-loop load: `concurrency` clients, each sending its next request on the last answer."""
    parts = urlsplit(url)
    if parts.hostname not in LOOPBACK:
        raise PipelineError(
            "load",
            f"refusing to send load to {parts.hostname}: only 127.0.0.1 is allowed",
            "start the server locally and point the load at 127.0.0.1",
        )
    if concurrency < 1 or duration_s <= 0:
        raise PipelineError(
            "load", f"concurrency {concurrency} and duration {duration_s}s must be positive", "pass e.g. concurrency 16 for 10 s"
        )
    config = {
        "host": f"{parts.scheme}://{parts.netloc}",
        "path": parts.path + (f"?{parts.query}" if parts.query else ""),
        "bodies": bodies or [""],
        "concurrency": concurrency,
        "duration_s": duration_s,
        "max_requests": max_requests,
        "headers": headers or {},
        "method": method,
        "timeout_s": timeout_s,
    }
    with tempfile.TemporaryDirectory(prefix="pipeline-load-") as tmp:
        config_path, out_path = Path(tmp) / "config.json", Path(tmp) / "out.json"
        config_path.write_text(json.dumps(config))
        try:
            proc = subprocess.run(
                [sys.executable, "-m", "pipeline.bench.locust_worker", str(config_path), str(out_path)],
                capture_output=True,
                text=True,
                timeout=duration_s + timeout_s + 30,
            )
        except subprocess.TimeoutExpired:
            raise PipelineError(
                "load",
                f"the load generator did not stop within {duration_s + timeout_s + 30:.0f}s",
                "the server may be hung; check its logs",
            ) from None
        if proc.returncode != 0 or not out_path.exists():
            tail = "\n".join((proc.stderr or proc.stdout).strip().splitlines()[-8:])
            raise PipelineError(
                "load",
                f"the load generator (locust) failed with exit code {proc.returncode}:\n{tail}",
                "check that locust is installed (make setup)",
            )
        data = json.loads(out_path.read_text())
    return LoadResult(
        concurrency=concurrency,
        seconds=float(data["seconds"]),
        latency_ms=np.asarray(data["latency_ms"], dtype=np.float64),
        status=np.asarray(data["status"], dtype=np.int64),
    )
