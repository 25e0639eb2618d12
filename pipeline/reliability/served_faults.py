"""Faults against a real TorchServe: a killed worker, a long soak, a stop mid-load, the attack surface.

Load comes from `pipeline.bench.loadgen` (locust in a child process); each function returns
a record of what was sent, what failed and how long recovery took, which
`pipeline.reliability` reports and the tests assert on.
"""

from __future__ import annotations

import json
import os
import select
import signal
import socket
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import psutil

from pipeline.bench.loadgen import LoadResult, run_load
from pipeline.errors import PipelineError
from pipeline.serving.common.client import http
from pipeline.serving.torchserve import proxy
from pipeline.serving.torchserve import server as serve
from pipeline.serving.torchserve.server import ServerInfo
from pipeline.settings import Settings

LOOPBACK = {"127.0.0.1", "::1", "::ffff:127.0.0.1"}
SLACK_BYTES = 64 << 20  # the frontend's own growth under load, beside the proxy's buffers


def _load_in_background(info: ServerInfo, bodies: list[str], concurrency: int, duration_s: float, max_requests: int = 0) -> Future:
    pool = ThreadPoolExecutor(max_workers=1)
    headers = {"Authorization": f"Bearer {info.token('inference')}"}
    future = pool.submit(run_load, info.predictions_url, bodies, concurrency, duration_s, max_requests=max_requests, headers=headers)
    pool.shutdown(wait=False)
    return future


def wait_for_clients(info: ServerInfo, clients: int, timeout: float = 60.0) -> float:
    """Seconds until `clients` connections to the inference port are open (the load is on)."""
    start = time.monotonic()
    port = info.ports["inference"]
    while time.monotonic() - start < timeout:
        for proc in info.processes():
            try:
                conns = proc.net_connections(kind="inet")
            except (psutil.NoSuchProcess, psutil.AccessDenied):
                continue
            if sum(c.laddr.port == port and c.status == psutil.CONN_ESTABLISHED for c in conns) >= clients:
                return time.monotonic() - start
        time.sleep(0.05)
    raise PipelineError(
        "reliability",
        f"the load generator did not open {clients} connections within {timeout:.0f}s",
        "check that locust runs (pip install the reliability extra) and the server answers",
    )


def worker_pids(info: ServerInfo) -> list[int]:
    return sorted(w["pid"] for w in info.workers())


def server_rss(info: ServerInfo) -> dict[str, int]:
    """Resident memory (bytes) of each of the server's processes, by `name pid`."""
    rss = {}
    for proc in info.processes():
        try:
            rss[f"{proc.name()} {proc.pid}"] = proc.memory_info().rss
        except psutil.NoSuchProcess:
            continue
    return rss


# --- a worker killed with requests in flight ------------------------------------------------


@dataclass(frozen=True)
class WorkerKill:
    """SIGKILL of the worker under load: what failed, how long until it answered again."""

    old_pid: int
    new_pid: int
    requests: int
    errors: int
    error_status: dict[str, int]
    concurrency: int
    recovery_s: float  # SIGKILL -> first correct answer
    worker_ready_s: float  # SIGKILL -> a new worker READY in the management API
    after_requests: int
    after_errors: int

    @property
    def survived(self) -> bool:
        # Only requests in flight may fail (at most one per client); the new worker serves every later one.
        return self.new_pid != self.old_pid and 0 < self.errors <= self.concurrency and self.after_requests > 0 and self.after_errors == 0


def kill_worker_in_flight(
    info: ServerInfo, bodies: list[str], valid: tuple[bytes, bytes], concurrency: int = 8, load_s: float = 8.0, after_requests: int = 2000
) -> WorkerKill:
    """Kill the worker while `concurrency` clients are sending; then prove every later request succeeds.

    `valid` is a request body and the exact answer it must get back.
    """
    body, answer = valid
    (old,) = worker_pids(info)[:1]
    load = _load_in_background(info, bodies, concurrency, load_s)
    wait_for_clients(info, concurrency)
    time.sleep(0.5)  # let the load settle into full batches
    killed = time.monotonic()
    os.kill(old, signal.SIGKILL)
    ready_s = recovery_s = None
    deadline = killed + 120
    while time.monotonic() < deadline and (ready_s is None or recovery_s is None):
        if ready_s is None and (pids := worker_pids(info)) and old not in pids and info.ready():
            ready_s = time.monotonic() - killed
        if recovery_s is None:
            try:
                status, got = info.predict(body, timeout=60)
            except OSError:
                status, got = 0, b""
            if status == 200 and got == answer:
                recovery_s = time.monotonic() - killed
        time.sleep(0.05)
    if ready_s is None or recovery_s is None:
        raise PipelineError(
            "reliability", f"the worker was not back within 120 s of SIGKILL (pid {old})", f"see {info.run_dir}/logs/model_log.log"
        )
    during: LoadResult = load.result()
    after = run_load(
        info.predictions_url,
        bodies,
        concurrency,
        60.0,
        max_requests=after_requests,
        headers={"Authorization": f"Bearer {info.token('inference')}"},
    )
    errors = {code: n for code, n in during.status_counts().items() if code != "200"}
    return WorkerKill(
        old,
        worker_pids(info)[0],
        during.requests,
        during.errors,
        errors,
        concurrency,
        round(recovery_s, 3),
        round(ready_s, 3),
        after.requests,
        after.errors,
    )


# --- soak -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Soak:
    """Many requests at fixed concurrency, time-bounded, with the server's memory before and after."""

    target_requests: int
    time_limit_s: float
    load: dict  # LoadResult.summary()
    rss_before: dict[str, int]
    rss_after: dict[str, int]
    rss_peak_total: int
    warmup_requests: int

    @property
    def growth_pct(self) -> float:
        before, after = sum(self.rss_before.values()), sum(self.rss_after.values())
        return 100.0 * (after - before) / before

    @property
    def survived(self) -> bool:
        return self.load["requests"] >= self.target_requests and self.load["errors"] == 0


def soak(
    info: ServerInfo, bodies: list[str], requests: int = 20_000, concurrency: int = 16, time_limit_s: float = 180.0, warmup: int = 2_000
) -> Soak:
    """Warm up, note memory, send `requests` at `concurrency` within `time_limit_s`, note memory again."""
    headers = {"Authorization": f"Bearer {info.token('inference')}"}
    run_load(info.predictions_url, bodies, concurrency, 60.0, max_requests=warmup, headers=headers)
    before = server_rss(info)
    peak = [sum(before.values())]
    done = threading.Event()

    def sample():
        while not done.wait(0.5):
            peak[0] = max(peak[0], sum(server_rss(info).values()))

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    try:
        result = run_load(info.predictions_url, bodies, concurrency, time_limit_s, max_requests=requests, headers=headers)
    finally:
        done.set()
        sampler.join()
    after = server_rss(info)
    return Soak(requests, time_limit_s, result.summary(), before, after, max(peak[0], sum(after.values())), warmup)


# --- stop with requests in flight ----------------------------------------------------------


@dataclass(frozen=True)
class GracefulStop:
    """serve.stop while clients are sending, then a restart in the same folder."""

    stop_s: float
    load_status: dict[str, int]
    processes_left: list[str]
    ports_still_open: list[int]
    key_file_left: bool
    restart_s: float
    restart_status: int
    processes_left_after_restart: list[str]

    @property
    def survived(self) -> bool:
        return (
            not self.processes_left
            and not self.ports_still_open
            and not self.key_file_left
            and self.restart_status == 200
            and not self.processes_left_after_restart
        )


def _describe(procs: list[psutil.Process]) -> list[str]:
    out = []
    for p in procs:
        try:
            out.append(f"{p.name()} {p.pid}")
        except psutil.NoSuchProcess:
            continue
    return out


def _open_ports(ports) -> list[int]:
    open_ = []
    for port in ports:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                open_.append(port)
    return open_


def stop_under_load(
    settings: Settings, info: ServerInfo, bodies: list[str], body: bytes, concurrency: int = 8, load_s: float = 5.0
) -> GracefulStop:
    """Stop the server while `concurrency` clients are sending; check nothing is left; restart and serve."""
    load = _load_in_background(info, bodies, concurrency, load_s)
    wait_for_clients(info, concurrency)
    time.sleep(0.5)
    start = time.monotonic()
    serve.stop(settings)
    stop_s = time.monotonic() - start
    left = _describe(info.processes())
    ports = _open_ports(info.ports.values())
    key_left = info.key_file.exists()
    status_counts = load.result().status_counts()
    start = time.monotonic()
    again = serve.start(settings, auto_ports=True)
    try:
        status, _ = again.predict(body)
        restart_s = time.monotonic() - start
    finally:
        serve.stop(settings)
    return GracefulStop(round(stop_s, 3), status_counts, left, ports, key_left, round(restart_s, 3), status, _describe(again.processes()))


# --- held bodies: many connections that each hold an almost complete body --------------------


@dataclass(frozen=True)
class HeldBodies:
    """Connections with no token that each declare a body, send most of it and hold the rest back.

    Before the proxy, 400 of these (1,000,000 of 1,048,000 bytes) exhausted TorchServe's
    direct memory and froze its frontend until a restart by hand.
    """

    connections: int
    declared_bytes: int
    sent_bytes: int
    attack_s: float
    reconnects: int  # held connections the server closed, opened again at once
    frontend_rss_before: int  # TorchServe's Java frontend and the proxy together, bytes
    frontend_rss_peak: int
    memory_bound: int  # what the proxy's limits allow its buffers, and some slack
    during_status: str  # an authenticated request sent in the middle of the attack
    recovery_s: float | None  # attackers closed -> an authenticated request answered 200; None: not within the limit
    recovery_limit_s: float

    @property
    def survived(self) -> bool:
        grew = self.frontend_rss_peak - self.frontend_rss_before
        return self.recovery_s is not None and self.recovery_s <= self.recovery_limit_s and grew <= self.memory_bound


def frontend_rss(info: ServerInfo) -> int:
    """Resident bytes of the processes that read request bodies: TorchServe's Java frontend and the proxy."""
    total = 0
    for proc in info.processes():
        try:
            if proc.name() in ("java", "haproxy"):
                total += proc.memory_info().rss
        except psutil.NoSuchProcess:
            continue
    return total


def _attackers(count: int, target, *args) -> list[threading.Thread]:
    """`count` daemon threads running `target(*args)`, started."""
    threads = [threading.Thread(target=target, args=args, daemon=True) for _ in range(count)]
    for thread in threads:
        thread.start()
    return threads


def proxy_limits(info: ServerInfo) -> proxy.Limits:
    """The proxy's limits for the running server, from its config.properties."""
    props = serve.read_properties(Path(info.run_dir) / "config.properties")
    return proxy.Limits(int(props["max_request_size"]), int(props["default_response_timeout"]))


def _hold_one(port: int, path: str, declared: int, sent: int, end: float, stats: dict) -> None:
    head = f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nContent-Length: {declared}\r\n\r\n"
    payload = head.encode() + b"1" * sent
    while time.monotonic() < end:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=max(0.1, end - time.monotonic())) as s:
                s.settimeout(max(0.1, end - time.monotonic()))
                s.sendall(payload)
                answer = s.recv(12)  # blocks until the server answers or closes, or the attack ends
            stats["reconnects"] += 1
            stats["refused_401"] += answer.startswith(b"HTTP/1.1 401")
        except OSError:
            time.sleep(0.05)  # refused, timed out or reset: try again while the attack lasts


def held_bodies(
    info: ServerInfo,
    body: bytes,
    connections: int = 400,
    declared: int = 1_048_000,
    sent: int = 1_000_000,
    attack_s: float = 20.0,
    recovery_limit_s: float = 10.0,
) -> HeldBodies:
    """Run the attack for `attack_s`, then time how long an authenticated request takes to be answered."""
    token = info.token("inference")
    before = frontend_rss(info)
    stats = {"reconnects": 0, "refused_401": 0}
    end = time.monotonic() + attack_s
    path = f"/predictions/{info.model}"
    attackers = _attackers(connections, _hold_one, info.ports["inference"], path, declared, sent, end, stats)
    peak = before
    during = ""
    while time.monotonic() < end:
        peak = max(peak, frontend_rss(info))
        if not during and time.monotonic() > end - attack_s / 2:
            try:
                during = _answer(*http("POST", info.predictions_url, body, token, timeout=min(5.0, end - time.monotonic() + 0.1)))
            except OSError as exc:
                during = f"no answer ({type(exc).__name__})"
        time.sleep(0.25)
    for thread in attackers:
        thread.join(timeout=5)
    closed = time.monotonic()
    recovery = None
    while time.monotonic() - closed < recovery_limit_s:
        try:
            status, _ = http("POST", info.predictions_url, body, token, timeout=max(0.5, recovery_limit_s - (time.monotonic() - closed)))
        except OSError:
            status = 0
        if status == 200:
            recovery = round(time.monotonic() - closed, 3)
            break
        time.sleep(0.2)
    peak = max(peak, frontend_rss(info))
    bound = proxy_limits(info).memory + SLACK_BYTES
    return HeldBodies(
        connections, declared, sent, attack_s, stats["reconnects"], before, peak, bound, during or "not sent", recovery, recovery_limit_s
    )


# --- security posture -----------------------------------------------------------------------


@dataclass(frozen=True)
class Probe:
    """One check of the running server's attack surface."""

    name: str
    expected: str
    got: str
    passed: bool


def _answer(status: int, answer: bytes) -> str:
    """`400 InvalidKeyException`: the status and TorchServe's error type, for the report."""
    try:
        return f"{status} {json.loads(answer).get('type', '')}".strip()
    except (ValueError, AttributeError):
        return f"{status} {answer[:40]!r}"


def _refused(status: int, answer: bytes) -> bool:
    # TorchServe 0.12 answers a failed token check with 400 InvalidKeyException, not 401.
    return status in (400, 401, 403) and b"Token Authorization failed" in answer


def _non_loopback_addresses() -> list[str]:
    found = []
    for addrs in psutil.net_if_addrs().values():
        for a in addrs:
            if (
                a.family in (socket.AF_INET, socket.AF_INET6)
                and a.address.split("%")[0] not in LOOPBACK
                and not a.address.startswith("fe80")
            ):
                found.append(a.address.split("%")[0])
    return found


def _reachable(address: str, port: int) -> bool:
    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    with socket.socket(family) as s:
        s.settimeout(1.0)
        return s.connect_ex((address, port)) == 0


def security_probes(info: ServerInfo) -> list[Probe]:
    """Listeners, tokens, the model API and reachability from other interfaces, checked live."""
    return [*_listener_probes(info), *_token_probes(info), *_model_api_probes(info), *_interface_probes(info)]


def _listener_probes(info: ServerInfo) -> list[Probe]:
    listening = []
    for proc in info.processes():
        try:
            listening += [c.laddr for c in proc.net_connections(kind="inet") if c.status == psutil.CONN_LISTEN]
        except psutil.NoSuchProcess:
            continue
    addresses = sorted({f"{a.ip}:{a.port}" for a in listening})
    missing = sorted(set(info.ports.values()) - {a.port for a in listening})
    return [
        Probe(
            "every listening socket is on loopback",
            "127.0.0.1 only",
            ", ".join(addresses),
            bool(listening) and all(a.ip in LOOPBACK for a in listening),
        ),
        Probe(
            "every configured port is listening (so the check above covers them)",
            "none missing",
            f"missing {missing}" if missing else "none missing",
            not missing,
        ),
    ]


def _token_probes(info: ServerInfo) -> list[Probe]:
    """Each API refuses no token and a wrong one, and management refuses the inference key."""
    probes = []
    body = b'{"x": 1.0}'
    for api, method, url, payload in (
        ("inference", "POST", info.predictions_url, body),
        ("inference /ping", "GET", f"{info.inference}/ping", None),
        ("management", "GET", f"{info.management}/models", None),
    ):
        for label, token in (("no token", None), ("a wrong token", "not-the-token")):
            status, answer = http(method, url, payload, token)
            probes.append(
                Probe(
                    f"{api} with {label} is refused",
                    "400/401 Token Authorization failed",
                    _answer(status, answer),
                    _refused(status, answer),
                )
            )
    status, answer = http("GET", f"{info.management}/models", token=info.token("inference"))
    probes.append(
        Probe(
            "management with the inference key is refused",
            "400/401 Token Authorization failed",
            _answer(status, answer),
            _refused(status, answer),
        )
    )
    return probes


def _model_api_probes(info: ServerInfo) -> list[Probe]:
    """With the management key: registering and unregistering refused, and the model still serves."""
    mgmt = info.token("management")
    status, _ = http("POST", f"{info.management}/models?url={info.model}.mar&model_name=again", token=mgmt)
    probes = [
        Probe("registering a model is refused", "403 (update and rollback only, on the management socket)", str(status), status == 403)
    ]
    status, _ = http("DELETE", f"{info.management}/models/{info.model}", token=mgmt)
    probes.append(
        Probe("unregistering the model is refused", "403 (update and rollback only, on the management socket)", str(status), status == 403)
    )
    probes.append(
        Probe("the model still serves after those attempts", "workers READY", "READY" if info.ready() else "not ready", info.ready())
    )
    return probes


def _interface_probes(info: ServerInfo) -> list[Probe]:
    others = _non_loopback_addresses()
    probes = []
    if not others:
        probes.append(
            Probe(
                "ports unreachable from other interfaces",
                "refused",
                "this machine has no non-loopback address; the listening-socket check covers it",
                True,
            )
        )
    for address in others:
        reached = [kind for kind, port in info.ports.items() if _reachable(address, port)]
        probes.append(
            Probe(
                f"ports unreachable at {address} (metrics {info.ports['metrics']} included)",
                "all refused",
                f"reachable: {reached}" if reached else "all refused",
                not reached,
            )
        )
    return probes


def form_body_probe(info: ServerInfo) -> dict:
    """The known TorchServe 0.12 frontend 500 (a form body with a bad %-escape); the worker must not notice."""
    from pipeline.reliability.fuzz import FORM_BODY_500

    before = worker_pids(info)
    status, answer = http("POST", info.predictions_url, FORM_BODY_500[0], info.token("inference"), content_type=FORM_BODY_500[1])
    return {
        "body": FORM_BODY_500[0].decode(),
        "content_type": FORM_BODY_500[1],
        "status": status,
        "answer": answer[:120].decode("utf-8", "replace"),
        "worker_unchanged": worker_pids(info) == before,
    }


def rss_mib(rss: dict[str, int]) -> float:
    return sum(rss.values()) / (1 << 20)


# --- HTTP/2 streams: many streams per connection, each declaring a large body -----------------

H2_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
H2_DATA, H2_HEADERS, H2_SETTINGS, H2_WINDOW_UPDATE = 0x0, 0x1, 0x4, 0x8
H2_WINDOW = 65_535  # every stream's and the connection's initial window (RFC 9113 6.9.2)
H2_FRAME = 16_384  # the largest frame a peer must accept


@dataclass(frozen=True)
class H2Streams:
    """Cleartext HTTP/2 with prior knowledge, no token: each stream declares a body and sends it as the windows allow.

    Before the proxy refused HTTP/2, each stream had a buffer of its own: 24 connections x 100
    streams took the proxy from 11 MB to 2,434 MB, which it kept after they closed.
    """

    connections: int
    streams: int  # per connection
    declared_bytes: int
    attack_s: float
    spoken: int  # connections the proxy answered in HTTP/2 (its SETTINGS frame)
    refused: int  # connections answered in HTTP/1.1 or closed before a frame
    proxy_rss_before: int
    proxy_rss_peak: int
    proxy_rss_after: int  # a second after the attackers closed
    memory_bound: int  # what the proxy's limits allow its buffers, and some slack

    @property
    def survived(self) -> bool:
        grew = max(self.proxy_rss_peak, self.proxy_rss_after) - self.proxy_rss_before
        return self.spoken == 0 and grew <= self.memory_bound


def _h2_frame(kind: int, flags: int, stream: int, payload: bytes = b"") -> bytes:
    return len(payload).to_bytes(3, "big") + bytes([kind, flags]) + stream.to_bytes(4, "big") + payload


def _hpack_literal(name: str, value: str) -> bytes:
    # A literal field without indexing, new name, no Huffman (RFC 7541 6.2.2); both shorter than 127 bytes.
    return b"\x00" + bytes([len(name)]) + name.encode() + bytes([len(value)]) + value.encode()


def _h2_request(stream: int, path: str, declared: int) -> bytes:
    fields = {":method": "POST", ":scheme": "http", ":path": path, ":authority": "127.0.0.1", "content-length": str(declared)}
    return _h2_frame(H2_HEADERS, 0x4, stream, b"".join(_hpack_literal(k, v) for k, v in fields.items()))  # END_HEADERS


def _h2_credit(frames: bytes, windows: dict[int, int]) -> tuple[bytes, bool]:
    """Add the WINDOW_UPDATEs in `frames` to `windows` (stream 0: the connection); the unparsed rest, and whether SETTINGS came."""
    settings = False
    while len(frames) >= 9:
        length, kind, stream = int.from_bytes(frames[:3], "big"), frames[3], int.from_bytes(frames[5:9], "big") & 0x7FFFFFFF
        if len(frames) < 9 + length:
            break
        if kind == H2_WINDOW_UPDATE and stream in windows:
            windows[stream] += int.from_bytes(frames[9:13], "big") & 0x7FFFFFFF
        settings |= kind == H2_SETTINGS
        frames = frames[9 + length :]
    return frames, settings


def _h2_one(port: int, path: str, streams: int, declared: int, end: float, stats: dict) -> None:
    ids = [2 * i + 1 for i in range(streams)]
    windows = {0: H2_WINDOW, **dict.fromkeys(ids, H2_WINDOW)}
    sent = dict.fromkeys(ids, 0)
    pending, spoke = b"", False
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
            s.sendall(H2_PREFACE + _h2_frame(H2_SETTINGS, 0, 0) + b"".join(_h2_request(i, path, declared) for i in ids))
            while time.monotonic() < end:
                data = []
                for i in ids:  # all but the last byte of each body, as the windows allow
                    n = min(H2_FRAME, windows[0], windows[i], declared - 1 - sent[i])
                    if n > 0:
                        data.append(_h2_frame(H2_DATA, 0, i, b"1" * n))
                        windows[0], windows[i], sent[i] = windows[0] - n, windows[i] - n, sent[i] + n
                if data:
                    s.sendall(b"".join(data))
                if not select.select([s], [], [], 0.05 if data else max(0.05, end - time.monotonic()))[0]:
                    continue
                chunk = s.recv(1 << 16)
                if not chunk or (not spoke and (pending + chunk).startswith(b"HTTP/")):
                    break  # closed, or answered in HTTP/1
                pending, settings = _h2_credit(pending + chunk, windows)
                spoke |= settings
    except OSError:
        pass  # reset or timed out: what the proxy said before counts
    stats["spoken" if spoke else "refused"] += 1


def proxy_rss(info: ServerInfo) -> int:
    """Resident bytes of the proxy (HAProxy) in front of TorchServe."""
    for proc in info.processes():
        try:
            if proc.name() == "haproxy":
                return proc.memory_info().rss
        except psutil.NoSuchProcess:
            continue
    raise PipelineError("reliability", f"no HAProxy process found for {info.model} in {info.run_dir}", "start the server again")


def h2_streams(info: ServerInfo, connections: int = 24, streams: int = 100, declared: int = 1_000_000, attack_s: float = 10.0) -> H2Streams:
    """Open `connections` HTTP/2 connections of `streams` streams each for `attack_s`; the proxy's memory during and after."""
    before = proxy_rss(info)
    stats = {"spoken": 0, "refused": 0}
    end = time.monotonic() + attack_s
    path = f"/predictions/{info.model}"
    attackers = _attackers(connections, _h2_one, info.ports["inference"], path, streams, declared, end, stats)
    peak = before
    while any(thread.is_alive() for thread in attackers):
        peak = max(peak, proxy_rss(info))
        time.sleep(0.1)
    time.sleep(1.0)
    bound = proxy_limits(info).memory + SLACK_BYTES
    return H2Streams(connections, streams, declared, attack_s, stats["spoken"], stats["refused"], before, peak, proxy_rss(info), bound)


# --- slow bodies without a token: headers and a few bytes, the connection reopened when closed --


@dataclass(frozen=True)
class SlowUnauthenticated:
    """Connections with no token that send their headers and a few bytes of the body, then wait.

    Before the proxy checked the token, each held a proxy connection until its body timed out
    (TorchServe checks the token only once the whole body has arrived): 300 of them for 30 s
    let a client with the token get one answer, after 32.7 s.
    """

    connections: int
    declared_bytes: int
    sent_bytes: int
    attack_s: float
    reconnects: int  # attacking connections the server closed, opened again at once
    refused_401: int  # of those, answered 401
    requests: int  # authenticated requests sent one after another during the attack
    answered: int  # of those, 200 within `latency_limit_s`
    latency_p50_s: float | None
    latency_max_s: float | None  # over the requests answered 200
    latency_limit_s: float

    @property
    def answered_share(self) -> float:
        return self.answered / self.requests if self.requests else 0.0

    @property
    def survived(self) -> bool:
        return self.answered_share >= 0.9


def slow_unauthenticated(info: ServerInfo, body: bytes, connections: int = 300, attack_s: float = 30.0) -> SlowUnauthenticated:
    """Run the attack for `attack_s` while a client with the token sends requests one after another."""
    declared, sent, latency_limit_s = 1_000, 10, 2.0
    token = info.token("inference")
    stats = {"reconnects": 0, "refused_401": 0}
    end = time.monotonic() + attack_s
    attackers = _attackers(connections, _hold_one, info.ports["inference"], f"/predictions/{info.model}", declared, sent, end, stats)
    time.sleep(min(1.0, attack_s / 4))  # the attack under way
    latencies, requests = [], 0
    while time.monotonic() < end - latency_limit_s:
        requests += 1
        start = time.monotonic()
        try:
            status, _ = http("POST", info.predictions_url, body, token, timeout=latency_limit_s)
        except OSError:
            status = 0
        if status == 200 and time.monotonic() - start <= latency_limit_s:
            latencies.append(time.monotonic() - start)
        time.sleep(0.05)
    for thread in attackers:
        thread.join(timeout=5)
    p50, worst = (float(np.median(latencies)), max(latencies)) if latencies else (None, None)
    return SlowUnauthenticated(
        connections,
        declared,
        sent,
        attack_s,
        stats["reconnects"],
        stats["refused_401"],
        requests,
        len(latencies),
        p50,
        worst,
        latency_limit_s,
    )
