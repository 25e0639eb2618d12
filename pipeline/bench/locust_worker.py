"""Locust, run as a library in its own process: closed-loop POSTs, every request recorded.

Run by `pipeline.bench.loadgen` as `python -m pipeline.bench.locust_worker CONFIG OUT`; never
imported by the pipeline itself, because importing locust monkey-patches the
standard library for gevent. Each of `concurrency` users sends its next request as
soon as the previous one is answered (no think time) until the time limit or the
request limit is reached. Every request's latency, status code and end time, and
the CPU time of the load window, are written to OUT as JSON, so the parent computes
exact percentiles (locust's own statistics round response times to whole
milliseconds).
"""

from __future__ import annotations

import itertools
import json
import sys
import time
from pathlib import Path
from typing import Any

import gevent
from locust import FastHttpUser, constant, task
from locust.env import Environment


def main(config_path: str, out_path: str) -> int:
    """The load run in its own process: the bodies, locust's user class, the run and its figures, in the order
    locust needs them; one sequence, which reads best whole."""
    with open(config_path) as f:
        config = json.load(f)
    # FastHttpSession sends bytes as they are (a JPEG), although its hint says str.
    bodies: list[Any] = [Path(path).read_bytes() for path in config["body_files"]]
    next_body = itertools.cycle(range(len(bodies))).__next__
    headers = {"Content-Type": "application/json", **config.get("headers", {})}
    method = config.get("method", "POST")
    limit = int(config.get("max_requests") or 0)
    records: list[tuple[float, int, float]] = []

    # Each user keeps to one address; users take the addresses in turn (Ray's replicas under direct ingress).
    next_host = itertools.cycle(config.get("hosts") or [config["host"]]).__next__

    class Client(FastHttpUser):
        host = config["host"]
        wait_time = constant(0)

        def __init__(self, environment):
            self.host = next_host()
            super().__init__(environment)

        # Enough sockets for every user; keep-alive like a real client.
        concurrency = 1
        network_timeout = float(config.get("timeout_s", 30.0))
        connection_timeout = float(config.get("timeout_s", 30.0))

        @task
        def send(self):
            data = bodies[next_body()] if method == "POST" else None
            with self.client.request(method, config["path"], data=data, headers=headers, name="request", catch_response=True) as response:
                # Status codes are counted by us; locust should not log each failure.
                response.success()

    env = Environment(user_classes=[Client], catch_exceptions=True)
    runner = env.create_local_runner()
    quitting: list[gevent.Greenlet] = []

    def on_request(response_time, response=None, exception=None, **_):
        status = getattr(response, "status_code", 0) or 0
        if exception is not None and status == 0:
            status = 0
        records.append((float(response_time), int(status), time.monotonic()))
        if limit and len(records) >= limit and not quitting:
            # Not runner.quit() here: this is a user's greenlet, which quit kills first. The kill landed while quit
            # was still stopping the others, so the run was never ended, and waited out the time limit with no
            # requests left to send (20,000 requests "at 133/s" in a soak that had sent them in 15 s).
            quitting.append(gevent.spawn(runner.quit))

    env.events.request.add_listener(on_request)
    # The CPU share is of the load window only: importing locust and gevent costs
    # a second or two of CPU before the first request.
    started, cpu_started = time.monotonic(), time.process_time()
    runner.start(int(config["concurrency"]), spawn_rate=int(config["concurrency"]))
    gevent.spawn_later(float(config["duration_s"]), runner.quit)
    runner.greenlet.join()
    seconds, cpu_s = time.monotonic() - started, time.process_time() - cpu_started
    with open(out_path, "w") as f:
        json.dump(
            {
                "seconds": seconds,
                "cpu_s": cpu_s,
                "latency_ms": [r[0] for r in records],
                "status": [r[1] for r in records],
                "end_s": [r[2] - started for r in records],
            },
            f,
        )
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1], sys.argv[2]))
