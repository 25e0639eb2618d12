"""Where a TorchServe worker's time goes under load: py-spy samples of the Python worker, grouped.

    .venv/bin/python scripts/profile_worker.py [--clients 16] [--seconds 6] [--model simple_nn] [--frontend]

Starts the model's shipped archive on a private TorchServe (free loopback ports), loads it
with wrk (or locust) at the given concurrency, and samples the worker with py-spy (idle
time included). Prints each group's share of the worker's wall time: waiting for the
frontend, reading and decoding its message, the handler (ours), encoding and sending the
answer, metrics and logging. Needs py-spy (it comes with the ray extra) and ptrace rights.

`--frontend` profiles the Java frontend instead, with the JDK's Flight Recorder (jcmd and
jfr, which come with the JDK): CPU samples by thread and by the innermost frame's package.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

import psutil

from pipeline.bench.loadgen import measure
from pipeline.bench.served import project_for
from pipeline.models import load_spec
from pipeline.serving.torchserve import server as serve
from pipeline.settings import Layout, Settings

# First match wins, looking from the innermost frame outwards.
GROUPS = (
    ("handler (pipeline/serving)", ("pipeline/serving/",)),
    ("metrics", ("ts/metrics/", "metric")),
    ("logging", ("logging/", "ts/utils/util.py:log")),
    ("decode the frontend's message", ("_retrieve", "retrieve_msg", "otf_message_handler.py:_retrieve", "_retrieve_buffer")),
    ("encode and send the answer", ("create_predict_response", "send", "sendall")),
)


def group(stack: str) -> str:
    frames = stack.split(";")
    if frames[-1].startswith("_retrieve_buffer"):  # blocked in recv: the worker has nothing to do
        return "idle: waiting for the frontend's next batch"
    for frame in reversed(frames):
        for name, needles in GROUPS:
            if any(n in frame for n in needles):
                return name
    return "other TorchServe worker code"


# The frontend's packages, by what they do; the first prefix that matches the innermost frame wins.
JAVA_GROUPS = (
    ("netty (HTTP and the worker socket)", ("io.netty.",)),
    ("logging (log4j)", ("org.apache.logging.", "org.slf4j.")),
    ("metrics", ("io.prometheus.", "org.pytorch.serve.metrics.")),
    ("JSON", ("com.google.gson.",)),
    ("TorchServe frontend", ("org.pytorch.serve.",)),
    ("JDK: NIO and sockets", ("sun.nio.", "java.nio.")),
    ("JDK: concurrency", ("java.util.concurrent.", "jdk.internal.misc.Unsafe")),
    ("JDK: strings and collections", ("java.lang.String", "java.util.", "java.lang.AbstractStringBuilder")),
)


def java_group(frame: str) -> str:
    for name, prefixes in JAVA_GROUPS:
        if frame.startswith(prefixes):
            return name
    return "other: " + ".".join(frame.split(".")[:2])


def frontend_samples(pid: int, seconds: int, folder: Path) -> tuple[collections.Counter, collections.Counter, collections.Counter]:
    """(samples by thread, by group, by innermost method) from a Flight Recorder run on the frontend."""
    recording = folder / "frontend.jfr"
    jcmd, jfr = shutil.which("jcmd"), shutil.which("jfr")
    if not jcmd or not jfr:
        raise SystemExit("error: --frontend needs jcmd and jfr from a JDK 11+ (apt-get install openjdk-17-jdk-headless)")
    # The JDK's 'profile' settings, sampling Java code every 1 ms instead of 10 ms.
    shipped = Path(os.path.realpath(jcmd)).parent.parent / "lib" / "jfr" / "profile.jfc"
    settings = folder / "profile-1ms.jfc"
    settings.write_text(re.sub(r'(control="method-sampling-java-interval">)[^<]*', r"\g<1>1 ms", shipped.read_text()))
    subprocess.run(
        [jcmd, str(pid), "JFR.start", f"settings={settings}", f"duration={seconds}s", f"filename={recording}"],
        check=True,
        capture_output=True,
        timeout=60,
    )
    deadline = seconds + 30
    for _ in range(deadline * 2):
        if recording.exists() and recording.stat().st_size:
            break
        threading.Event().wait(0.5)
    threading.Event().wait(1.0)
    printed = subprocess.run(
        [jfr, "print", "--json", "--events", "jdk.ExecutionSample", str(recording)], check=True, capture_output=True, text=True
    )
    threads: collections.Counter = collections.Counter()
    groups: collections.Counter = collections.Counter()
    leaves: collections.Counter = collections.Counter()
    for event in json.loads(printed.stdout)["recording"]["events"]:
        values = event["values"]
        name = (values.get("sampledThread") or {}).get("javaName") or "?"
        threads[name.rstrip("0123456789-")] += 1
        frames = (values.get("stackTrace") or {}).get("frames") or []
        if frames:
            method = frames[0]["method"]
            frame = f"{method['type']['name'].replace('/', '.')}.{method['name']}"
            groups[java_group(frame)] += 1
            leaves[frame] += 1
    return threads, groups, leaves


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="simple_nn")
    p.add_argument("--clients", type=int, default=16)
    p.add_argument("--seconds", type=int, default=6)
    p.add_argument("--frontend", action="store_true", help="profile the Java frontend (Flight Recorder) instead of the Python worker")
    args = p.parse_args()
    py_spy = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
    layout = Layout(Path(".").resolve(), args.model)
    with tempfile.TemporaryDirectory(prefix="profile-worker-") as tmp:
        project = project_for({}, Settings(model=args.model), layout, Path(tmp))
        info = serve.start(project, auto_ports=True)
        try:
            [worker] = [w["pid"] for w in info.workers()]
            load, result = start_load(info, args)
            out = Path(tmp) / "worker.txt"
            procs = {p.pid: p for p in info.processes()}
            for proc in procs.values():
                proc.cpu_percent()
            if args.frontend:
                [java] = [pid for pid, proc in procs.items() if proc.name() == "java"]
                threads, groups, leaves = frontend_samples(java, args.seconds, Path(tmp))
                load.join()
                return report_frontend(args, result, threads, groups, leaves)
            subprocess.run(
                [py_spy, "record", "-p", str(worker), "-d", str(args.seconds), "-r", "500", "--idle", "-f", "raw", "-o", str(out)],
                check=True,
                capture_output=True,
                timeout=args.seconds + 60,
            )
            cpu = cpu_percent(procs, worker)
            load.join()
        finally:
            serve.stop(project)
        counts, leaves, callers = worker_samples(out)
    return report_worker(args, result, cpu, counts, callers, leaves)


def start_load(info: serve.ServerInfo, args) -> tuple[threading.Thread, dict]:
    """The load generator, started in a thread for a few seconds longer than the sampling; its result fills the dict."""
    headers = {"Authorization": f"Bearer {info.token()}"}
    body = json.dumps(load_spec(args.model).example_request)
    result: dict = {}
    load = threading.Thread(
        target=lambda: result.update(measure(info.predictions_url, body, args.clients, args.seconds + 4, headers=headers))
    )
    load.start()
    return load, result


def cpu_percent(procs: dict[int, psutil.Process], worker: int) -> dict[str, float]:
    """Each server process's CPU % since its first reading, by name (the worker marked)."""
    cpu = {}
    for pid, proc in procs.items():
        try:
            cpu[f"{proc.name()} {'(worker)' if pid == worker else ''}".strip()] = proc.cpu_percent()
        except psutil.NoSuchProcess:
            continue
    return cpu


def worker_samples(out: Path) -> tuple[collections.Counter, collections.Counter, collections.Counter]:
    """(samples by group, by innermost frame, logging's by the code that logs) from py-spy's raw output."""
    counts: collections.Counter = collections.Counter()
    leaves: collections.Counter = collections.Counter()
    callers: collections.Counter = collections.Counter()
    for line in out.read_text().splitlines():
        stack, _, n = line.rpartition(" ")
        counts[group(stack)] += int(n)
        leaves[stack.split(";")[-1]] += int(n)
        if group(stack) == "logging":
            callers[next((f for f in reversed(stack.split(";")) if "logging/" not in f), "?")] += int(n)
    return counts, leaves, callers


def report_worker(
    args, result: dict, cpu: dict[str, float], counts: collections.Counter, callers: collections.Counter, leaves: collections.Counter
) -> int:
    total = sum(counts.values())
    print(
        f"{args.model}, {args.clients} clients: {result.get('requests_per_s', 0):,.0f} req/s ({result.get('generator')}), p50 {result.get('p50_ms', 0):.2f} ms"
    )
    print(
        "CPU while sampling (% of one core): "
        + ", ".join(f"{name} {pct:.0f}%" for name, pct in sorted(cpu.items(), key=lambda kv: -kv[1]) if pct >= 1)
    )
    print(f"worker wall time by group ({total} samples at 500 Hz, idle included):")
    for name, n in counts.most_common():
        print(f"  {n / total:6.1%}  {name}")
    print("logging, by the code that logs:")
    for name, n in callers.most_common(4):
        print(f"  {n / total:6.1%}  {name}")
    print("innermost frames:")
    for name, n in leaves.most_common(8):
        print(f"  {n / total:6.1%}  {name}")
    return 0


def report_frontend(args, result: dict, threads: collections.Counter, groups: collections.Counter, leaves: collections.Counter) -> int:
    total = sum(threads.values()) or 1
    print(
        f"{args.model}, {args.clients} clients: {result.get('requests_per_s', 0):,.0f} req/s ({result.get('generator')}), "
        f"p50 {result.get('p50_ms', 0):.2f} ms"
    )
    print(f"frontend CPU samples ({total}, Flight Recorder 'profile' settings at 1 ms), by thread:")
    for name, n in threads.most_common(8):
        print(f"  {n / total:6.1%}  {name}")
    print("by the innermost frame's package:")
    for name, n in groups.most_common():
        print(f"  {n / total:6.1%}  {name}")
    print("innermost frames:")
    for name, n in leaves.most_common(12):
        print(f"  {n / total:6.1%}  {name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
