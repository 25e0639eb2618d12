"""Load generation against an HTTP endpoint, in a child process, loopback only.

`run_load` starts `pipeline.bench.locust_worker` (locust used as a library), waits for it
within a hard deadline, and returns every request's latency and status code: what the
fault harness needs. `measure` is the benchmark's: `wrk` (a C load generator) where it is
installed, locust otherwise, and says which ran. Both record the generator's own CPU time,
because on a small machine the load generator competes with the server for the cores.
Only loopback targets are allowed: load is never sent to another machine.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import SplitResult, urlsplit

import numpy as np

from pipeline.errors import PipelineError

PERCENTILES = (50, 90, 99, 99.9)
LOOPBACK = {"127.0.0.1", "localhost", "::1"}


def _check_target(url: str, concurrency: int, duration_s: float):
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
    return parts


def _run_child(command: list[str], deadline_s: float, what: str) -> tuple[int, str, float]:
    """(exit code, output, CPU seconds the child used) of a command killed at its deadline."""
    with tempfile.TemporaryFile() as out:
        proc = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        deadline = time.monotonic() + deadline_s
        while True:
            pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
            if pid:
                break
            if time.monotonic() > deadline:
                proc.kill()
                os.wait4(proc.pid, 0)
                raise PipelineError(
                    "load", f"the load generator ({what}) did not stop within {deadline_s:.0f}s", "the server may be hung; check its logs"
                )
            time.sleep(0.02)
        proc.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        return proc.returncode, out.read().decode("utf-8", "replace"), usage.ru_utime + usage.ru_stime


@dataclass(frozen=True)
class LoadResult:
    """What one load run did: per-request latency (ms) and status (0 = no response)."""

    concurrency: int
    seconds: float
    latency_ms: np.ndarray
    status: np.ndarray
    cpu_s: float = 0.0  # the load generator's own CPU time

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
            **generator_share("locust", self.cpu_s, self.seconds),
        }


def generator_share(name: str, cpu_s: float, seconds: float) -> dict:
    """Which load generator ran, and the share of the machine's CPU it used meanwhile."""
    cores = os.cpu_count() or 1
    return {"generator": name, "generator_cpu_s": cpu_s, "generator_cpu_share": cpu_s / (seconds * cores) if seconds > 0 else None}


def run_load(
    url: str,
    bodies: Sequence[str | bytes],
    concurrency: int,
    duration_s: float,
    *,
    max_requests: int = 0,
    headers: dict[str, str] | None = None,
    method: str = "POST",
    timeout_s: float = 30.0,
    spread: Sequence[str] = (),
) -> LoadResult:
    """Closed-loop load: `concurrency` clients, each sending its next request on the last answer;
    with `spread` (the same route at other addresses), the clients take the addresses in turn."""
    parts = _check_target(url, concurrency, duration_s)
    others = [_check_target(u, concurrency, duration_s) for u in spread]
    config = {
        "host": f"{parts.scheme}://{parts.netloc}",
        "hosts": [f"{p.scheme}://{p.netloc}" for p in (parts, *others)],
        "path": parts.path + (f"?{parts.query}" if parts.query else ""),
        "concurrency": concurrency,
        "duration_s": duration_s,
        "max_requests": max_requests,
        "headers": headers or {},
        "method": method,
        "timeout_s": timeout_s,
    }
    with tempfile.TemporaryDirectory(prefix="pipeline-load-") as tmp:
        config_path, out_path = Path(tmp) / "config.json", Path(tmp) / "out.json"
        # Bodies travel as files: a JPEG is bytes, which JSON cannot hold.
        config["body_files"] = []
        for i, body in enumerate(bodies or [""]):
            path = Path(tmp) / f"body-{i}"
            path.write_bytes(body.encode("utf-8") if isinstance(body, str) else body)
            config["body_files"].append(str(path))
        config_path.write_text(json.dumps(config))
        command = [sys.executable, "-m", "pipeline.bench.locust_worker", str(config_path), str(out_path)]
        code, output, _ = _run_child(command, duration_s + timeout_s + 30, "locust")
        if code != 0 or not out_path.exists():
            tail = "\n".join(output.strip().splitlines()[-8:])
            raise PipelineError(
                "load",
                f"the load generator (locust) failed with exit code {code}:\n{tail}",
                "check that locust is installed (pip install the bench extra)",
            )
        data = json.loads(out_path.read_text())
    return LoadResult(
        concurrency=concurrency,
        seconds=float(data["seconds"]),
        latency_ms=np.asarray(data["latency_ms"], dtype=np.float64),
        status=np.asarray(data["status"], dtype=np.int64),
        cpu_s=float(data["cpu_s"]),
    )


# wrk reports through a Lua script: status counts from every thread, percentiles in µs.
WRK_SCRIPT = """
local threads = {}
function setup(thread)
  if pick then pick(thread) end
  table.insert(threads, thread)
end
function init(args) statuses = {} end
function response(status, hdrs, b) statuses[status] = (statuses[status] or 0) + 1 end
function done(summary, latency, requests)
  local counts = {}
  for _, t in ipairs(threads) do
    for code, n in pairs(t:get("statuses")) do counts[tostring(code)] = (counts[tostring(code)] or 0) + n end
  end
  local parts = {}
  for code, n in pairs(counts) do table.insert(parts, string.format('"%s": %d', code, n)) end
  local e = summary.errors
  io.write(string.format(
    'WRK-JSON {"requests": %d, "duration_us": %d, "status": {%s}, "socket_errors": %d, '
    .. '"p50_us": %f, "p90_us": %f, "p99_us": %f, "p999_us": %f, "mean_us": %f}\\n',
    summary.requests, summary.duration, table.concat(parts, ", "), e.connect + e.read + e.write + e.timeout,
    latency:percentile(50), latency:percentile(90), latency:percentile(99), latency:percentile(99.9), latency.mean))
end
"""


def wrk_available() -> bool:
    return shutil.which("wrk") is not None


def _wrk_request(method: str, body_path: Path, content_type: str, headers: dict[str, str]) -> list[str]:
    """The Lua lines that set wrk's request: its method, its body (POST) and headers."""
    lines = [f"wrk.method = {json.dumps(method)}"]
    if method == "POST":
        lines += [
            f'local body_file = assert(io.open({json.dumps(str(body_path))}, "rb"))',
            'wrk.body = body_file:read("*a")',
            "body_file:close()",
            f'wrk.headers["Content-Type"] = {json.dumps(content_type)}',
        ]
    return lines + [f"wrk.headers[{json.dumps(k)}] = {json.dumps(v)}" for k, v in headers.items()]


def _wrk_targets(targets: list[SplitResult]) -> list[str]:
    """With several addresses, the Lua `pick` that WRK_SCRIPT's setup calls: thread i connects to address i."""
    if len(targets) < 2:
        return []
    where = ", ".join(f"{{{json.dumps(t.hostname)}, {json.dumps(str(t.port))}}}" for t in targets)
    return [
        f"local targets, picked = {{{where}}}, 0",
        "function pick(thread)",
        "  picked = picked + 1",
        "  local t = targets[picked]",
        "  thread.addr = wrk.lookup(t[1], t[2])[1]",
        "end",
    ]


def run_wrk(
    url: str,
    body: str | bytes,
    concurrency: int,
    duration_s: float,
    *,
    headers: dict[str, str] | None = None,
    method: str = "POST",
    content_type: str = "application/json",
    spread: Sequence[str] = (),
) -> dict:
    """wrk, `concurrency` connections for whole seconds: the summary `LoadResult.summary()` gives.

    One thread; or, with `spread` (the same route at other addresses: Ray's replicas under
    direct ingress), one thread per address, each with its share of the connections, so
    the load is spread as a client balancing over them would spread it. wrk's percentiles
    are over every thread's requests.
    """
    targets = [_check_target(u, concurrency, duration_s) for u in (url, *spread)][: max(1, concurrency)]
    seconds = max(1, round(duration_s))
    with tempfile.TemporaryDirectory(prefix="pipeline-wrk-") as tmp:
        body_path = Path(tmp) / "body"  # read from a file, so that any bytes (a JPEG) go as they are
        body_path.write_bytes(body.encode("utf-8") if isinstance(body, str) else body)
        lines = _wrk_request(method, body_path, content_type, headers or {}) + _wrk_targets(targets)
        script = Path(tmp) / "load.lua"
        script.write_text("\n".join(lines) + "\n" + WRK_SCRIPT)
        command = ["wrk", f"-t{len(targets)}", f"-c{concurrency}", f"-d{seconds}s", "--timeout", "30s", "-s", str(script), url]
        code, output, cpu_s = _run_child(command, seconds + 60, "wrk")
    found = [line for line in output.splitlines() if line.startswith("WRK-JSON ")]
    if code != 0 or not found:
        raise PipelineError(
            "load",
            f"wrk failed with exit code {code}:\n{output.strip()[-800:]}",
            "check that wrk runs (apt-get install wrk), or use locust",
        )
    data = json.loads(found[-1].removeprefix("WRK-JSON "))
    wall = data["duration_us"] / 1e6
    status = {str(k): int(v) for k, v in data["status"].items()}
    if data["socket_errors"]:
        status["0"] = status.get("0", 0) + int(data["socket_errors"])
    errors = sum(n for code, n in status.items() if code != "200")
    return {
        "concurrency": concurrency,
        "requests": int(data["requests"]),
        "errors": errors,
        "status": status,
        "seconds": wall,
        "requests_per_s": data["requests"] / wall if wall > 0 else 0.0,
        **{f"p{p}_ms": data[f"p{p}_us"] / 1e3 for p in ("50", "90", "99", "999")},
        "mean_ms": data["mean_us"] / 1e3,
        **generator_share("wrk", cpu_s, wall),
    }


def measure(
    url: str,
    body: str | bytes,
    concurrency: int,
    duration_s: float,
    *,
    headers=None,
    method: str = "POST",
    generator: str = "auto",
    content_type: str = "application/json",
    spread: Sequence[str] = (),
) -> dict:
    """The benchmark's load: wrk where installed (or asked for), locust otherwise; the summary says which ran.

    `spread`: the same route at other addresses, the load spread over them all.
    """
    if generator == "wrk" or (generator == "auto" and wrk_available()):
        if not wrk_available():
            raise PipelineError(
                "load", "--load-generator wrk: wrk is not installed", "sudo apt-get install -y wrk, or use --load-generator locust"
            )
        return run_wrk(url, body, concurrency, duration_s, headers=headers, method=method, content_type=content_type, spread=spread)
    headers = {"Content-Type": content_type, **(headers or {})}
    return run_load(url, [body] if body else [], concurrency, duration_s, headers=headers, method=method, spread=spread).summary()
