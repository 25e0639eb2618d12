"""Serve an archive with a real TorchServe: start it, wait for READY workers, stop it.

Each model's server runs from `run/<model>/`: its config.properties (made from
pipeline/serving/torchserve/torchserve.properties), key_file.json (the tokens TorchServe writes),
model_store/ (the server's own copy of the archive, checked after it was copied: what
TorchServe unpacks is what was checked), logs/,
tmp/ (TorchServe's pid file, worker sockets and unpacked archives, so servers in
different folders never collide) and server.json (what `stop` needs).
Readiness means the model's workers are READY in the management API: `/ping`
answers Healthy even while every worker is dying.
The size caps in config.properties are raised to what the archive's io_contract.json
declares (`size_caps`): the handler refuses a larger answer itself, so none reaches the
frontend's limit, which would cost the worker.
"""

from __future__ import annotations

import importlib.resources
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import psutil

from pipeline.artifacts import files
from pipeline.artifacts.archive import private_archive, read_contract
from pipeline.artifacts.manifest import Manifest
from pipeline.errors import PipelineError
from pipeline.serving.backends import ServeOptions
from pipeline.serving.common import STAGE, history, metrics
from pipeline.serving.common.client import Endpoint, free_ports, http, port_in_use
from pipeline.serving.common.contract import Contract
from pipeline.serving.common.processes import running, wait_ended
from pipeline.serving.torchserve import proxy
from pipeline.settings import Layout, Settings, resolve

CONFIG_TEMPLATE = "torchserve.properties"  # package data beside this module
PORT_KEYS = {
    "inference": ("inference_address", None),
    "management": ("management_address", None),
    "metrics": ("metrics_address", None),
    "grpc_inference": (None, "grpc_inference_port"),
    "grpc_management": (None, "grpc_management_port"),
}


HTTP_APIS = [kind for kind, (address_key, _) in PORT_KEYS.items() if address_key]
LOG_CONFIG = "log4j2.xml"


def shipped_properties() -> dict[str, str]:
    """The server configuration this project ships (secure defaults); see the file's comments."""
    return parse_properties((importlib.resources.files(__package__ or "pipeline.serving.torchserve") / CONFIG_TEMPLATE).read_text())


def read_properties(path: Path) -> dict[str, str]:
    return parse_properties(Path(path).read_text())


def parse_properties(text: str) -> dict[str, str]:
    props = {}
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#") and "=" in line:
            key, value = line.split("=", 1)
            props[key.strip()] = value.strip()
    return props


def _port_of(props: dict[str, str], kind: str) -> int:
    address_key, port_key = PORT_KEYS[kind]
    if port_key:
        return int(props[port_key])
    assert address_key is not None  # every PORT_KEYS row names one of the two
    return int(props[address_key].rsplit(":", 1)[1])


@dataclass(frozen=True)
class ServerInfo(Endpoint):
    """A running server, as recorded in run/<model>/server.json."""

    model: str
    pid: int
    run_dir: str
    inference: str
    management: str
    metrics: str
    ports: dict[str, int]

    @property
    def metrics_url(self) -> str:
        return f"{self.metrics}/metrics"

    def describe(self, timeout: float = 5) -> list[dict] | None:
        """The management API's description of the model, or None while it is not answering."""
        try:
            status, body = http("GET", f"{self.management}/models/{self.model}", token=self.token("management"), timeout=timeout)
        except (OSError, KeyError, json.JSONDecodeError):
            return None
        return json.loads(body) if status == 200 else None

    def workers(self) -> list[dict]:
        described = self.describe()
        return described[0]["workers"] if described else []

    def ready(self) -> bool:
        workers = self.workers()
        return bool(workers) and all(w["status"] == "READY" for w in workers)

    def processes(self) -> list[psutil.Process]:
        """Every live process of this server: the launcher, Java and the Python workers."""
        found = []
        for proc in psutil.process_iter(["pid", "cmdline"]):
            try:
                if proc.info["pid"] == self.pid or self.run_dir + "/" in " ".join(proc.info["cmdline"] or ()):
                    found.append(proc)
            except (psutil.NoSuchProcess, psutil.AccessDenied):
                continue
        return running(found)


def run_dir(layout: Layout) -> Path:
    return layout.root / "run" / layout.model


def load_info(layout: Layout) -> ServerInfo | None:
    path = run_dir(layout) / "server.json"
    if not path.exists():
        return None
    return ServerInfo(**json.loads(path.read_text()))


def size_caps(mar: Path) -> dict[str, int]:
    """TorchServe's size caps (bytes) that an archive's contract needs: its largest request body and answer."""
    contract = Contract(read_contract(mar))
    return {"max_request_size": contract.max_request_bytes, "max_response_size": contract.max_response_bytes}


def api_socket(folder: Path, kind: str) -> Path:
    """The Unix socket TorchServe serves an HTTP API on; the proxy listens on its TCP port."""
    return folder / f"{kind}.sock"


def _write_config(
    store: Path, folder: Path, auto_ports: bool, overrides: dict[str, str] | None = None, caps: dict[str, int] | None = None
) -> tuple[Path, dict[str, str], dict[str, int]]:
    props = shipped_properties()
    props.update(overrides or {})
    # At least what the archive declares: an answer under the contract's limit that the
    # frontend refused would kill the worker (TooLongFrameException).
    for key, least in (caps or {}).items():
        props[key] = str(max(int(props.get(key, "0")), least))
    fit_jvm_memory(props)
    store = store.resolve()
    props["model_store"] = str(store)
    props["allowed_urls"] = f"file://{store}/.*"
    ports = dict(zip(PORT_KEYS, free_ports(len(PORT_KEYS)))) if auto_ports else {kind: _port_of(props, kind) for kind in PORT_KEYS}
    # TorchServe's HTTP APIs listen on Unix sockets in the 0700 run folder, and the proxy
    # on their TCP ports (pipeline/serving/torchserve/proxy.py says why); gRPC binds TCP itself.
    props["use_native_io"] = "true"  # TorchServe needs epoll for Unix sockets
    for kind, (address_key, port_key) in PORT_KEYS.items():
        if address_key:
            props[address_key] = f"unix:{api_socket(folder, kind)}"
        else:
            assert port_key is not None  # every PORT_KEYS row names one of the two
            props[port_key] = str(ports[kind])
    busy = [f"{kind} {port}" for kind, port in ports.items() if port_in_use(port)]
    if busy:
        raise PipelineError(
            STAGE,
            f"port(s) already in use on 127.0.0.1: {', '.join(busy)}",
            "stop what holds them (python -m pipeline stop), or pick free ports: python -m pipeline serve --ports auto",
        )
    path = folder / "config.properties"
    files.write_text(path, "".join(f"{k}={v}\n" for k, v in props.items()))
    return path, props, ports


_XMX = re.compile(r"-Xmx(\d+)m\b")


def fit_jvm_memory(props: dict[str, str]) -> None:
    """Raise the frontend's -Xmx, and with it its direct memory, to what a body at the cap needs (proxy.Limits.jvm_memory)."""
    need = proxy.Limits(int(props["max_request_size"]), int(props["default_response_timeout"])).jvm_memory >> 20
    found = _XMX.search(props.get("vmargs", ""))
    if found and int(found.group(1)) < need:
        props["vmargs"] = _XMX.sub(f"-Xmx{need}m", props["vmargs"])


_SOCKET_PATH_MAX = 107  # sun_path on Linux holds 108 bytes with the terminating NUL
_LOG_PREFIX = re.compile(r"^\S+ \[\w+\s*\] \S+ (MODEL_LOG|MODEL_METRICS) - ")
_EXCEPTION = re.compile(r"^[A-Za-z_][\w.]*(Error|Exception|Exit)\b.*")


def _settled(path: Path, quiet_s: float = 0.5, timeout: float = 5.0) -> None:
    """Wait until `path` has not grown for `quiet_s` (at most `timeout`): an asynchronous log, read whole."""
    deadline, size = time.monotonic() + timeout, -1
    while time.monotonic() < deadline and path.stat().st_size != size:
        size = path.stat().st_size
        time.sleep(quiet_s)


def _tail(path: Path, lines: int = 20) -> str:
    """The end of a TorchServe log, without its timestamp prefixes, exceptions first."""
    if not path.exists():
        return f"({path} was not written)"
    text = [_LOG_PREFIX.sub("", line) for line in path.read_text(errors="replace").splitlines()]
    errors = list(dict.fromkeys(line for line in text if _EXCEPTION.match(line)))
    head = "".join(f"  {e}\n" for e in errors[:5])
    return head + "  ...\n" + "\n".join(f"  | {line}" for line in text[-lines:])


def start(settings: Settings, auto_ports: bool = False, timeout: float = 120.0, properties: dict[str, str] | None = None) -> ServerInfo:
    """Start TorchServe with a checked private copy of model_store/<model>.mar; return once its workers are READY.

    `properties` overrides entries of the shipped torchserve.properties for this server
    only (the benchmark's tuned config); addresses and the model store stay ours.
    """
    spec, layout = resolve(settings)
    if shutil.which("java") is None:
        raise PipelineError(
            STAGE,
            "java was not found: TorchServe's frontend needs Java 11 or newer",
            "install it: sudo apt-get install -y openjdk-17-jre-headless (or your OS's JRE 17 package)",
        )
    manifest = Manifest(layout.root, spec.name, settings.model)
    name = layout.served_name(settings.variant)
    folder = run_dir(layout)
    existing = load_info(layout)
    if existing is not None and existing.processes():
        raise PipelineError(
            STAGE,
            f"a server for {spec.name} is already running (pid {existing.pid}) at {existing.inference}",
            "use it, or stop it first: python -m pipeline stop",
        )
    # Workers listen on Unix sockets in tmp/ (.ts.sock.<port>, ports from 9000 up), and a
    # socket path longer than 107 bytes kills each worker at start with no other clue.
    sockets = [folder / "tmp" / ".ts.sock.65535", *(api_socket(folder, kind) for kind in HTTP_APIS)]
    longest = max(len(str(path)) for path in sockets)
    if longest > _SOCKET_PATH_MAX:
        raise PipelineError(
            STAGE,
            f"the project folder's path is too long for TorchServe: its Unix sockets in "
            f"{folder} would be up to {longest} bytes, over the {_SOCKET_PATH_MAX}-byte limit",
            "run from a folder with a shorter path (or pass a shorter --root)",
        )
    # Owner only, whatever the umask: tmp/ holds the workers' sockets, and the folder the key file.
    for private in (folder, folder / "logs", folder / "tmp", folder / "model_store"):
        private.mkdir(parents=True, exist_ok=True)
        private.chmod(0o700)
    mar, rec, version = private_archive(manifest, settings.variant, STAGE, folder / "model_store")
    # A port picked free can be taken by another process before TorchServe or HAProxy binds it: with
    # --ports auto, a start that lost that race picks other ports, twice at most.
    for _ in range(2 if auto_ports else 0):
        try:
            info = _launch(settings, folder, mar, name, auto_ports, properties, timeout)
            break
        except PipelineError as exc:
            if "Address already in use" not in str(exc):
                raise
    else:
        info = _launch(settings, folder, mar, name, auto_ports, properties, timeout)
    history.record(folder, history.Served(version, f"model_store/{mar.name}", rec.sha256))
    return info


def _launch(
    settings: Settings,
    folder: Path,
    mar: Path,
    name: str,
    auto_ports: bool,
    properties: dict[str, str] | None,
    timeout: float,
) -> ServerInfo:
    """Write the config, start TorchServe and its proxy, and wait for READY workers; stopped again on any failure."""
    for stale in ("server.json", "key_file.json", str(EXPORTER_SOCKET), *(api_socket(folder, kind).name for kind in HTTP_APIS)):
        (folder / stale).unlink(missing_ok=True)
    config, props, ports = _write_config(mar.parent, folder, auto_ports, properties, size_caps(mar))

    with open(folder / "logs" / "stdout.log", "ab") as out:
        # Own session: stop() signals the whole group (launcher, Java, workers) at once.
        proc = subprocess.Popen(
            _torchserve_command(config, mar, name),
            cwd=folder,
            env=_torchserve_env(folder),
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
    info = ServerInfo(
        model=name,
        pid=proc.pid,
        run_dir=str(folder),
        inference=f"http://127.0.0.1:{ports['inference']}",
        management=f"http://127.0.0.1:{ports['management']}",
        metrics=f"http://127.0.0.1:{ports['metrics']}",
        ports=ports,
    )
    files.write_json(folder / "server.json", asdict(info))
    try:
        limits = _proxy_limits(mar, props)
        # The proxy checks each API's key at the headers, so it starts once TorchServe has written them.
        keys = _wait_for_keys(info, proc, timeout)
        routes = [
            proxy.Route(kind, ports[kind], api_socket(folder, kind).relative_to(folder), keys.get(kind))
            for kind in HTTP_APIS
            if kind != "metrics"
        ]
        # The metrics port serves the workers' metrics (pipeline.serving.common.metrics), behind the inference key.
        exporter = _start_exporter(folder)
        routes.append(proxy.Route("metrics", ports["metrics"], EXPORTER_SOCKET, keys["inference"], key_name="inference"))
        guard = proxy.start(folder / "proxy", routes, limits, folder / "logs", cwd=folder, model=name)
        _wait_for_socket(folder / EXPORTER_SOCKET, exporter, timeout)
        _wait_ready(info, proc, guard, timeout)
    except BaseException:
        stop(settings)
        raise
    return info


def _torchserve_env(folder: Path) -> dict[str, str]:
    """This environment without TorchServe's own switches (TS_*), its temporary files and logs in the run folder,
    and the workers' metrics in its metrics folder (emptied: this server counts from zero)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("TS_")}
    env.update(
        TEMP=str(folder / "tmp"), TMPDIR=str(folder / "tmp"), LOG_LOCATION=str(folder / "logs"), METRICS_LOCATION=str(folder / "logs")
    )
    env.update(metrics.prepare(folder / METRICS_DIR))
    return env


METRICS_DIR = "metrics"  # in the run folder: the workers' metrics files
EXPORTER_SOCKET = Path("metrics-export.sock")  # in the run folder: what the proxy's metrics port forwards to


def _start_exporter(folder: Path) -> subprocess.Popen:
    """The process that answers GET /metrics with every worker's figures, on a Unix socket in the run folder."""
    with open(folder / "logs" / "metrics.log", "ab") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "pipeline.serving.common.metrics", str(folder / METRICS_DIR), str(folder / EXPORTER_SOCKET)],
            cwd=folder,
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )


def _wait_for_socket(path: Path, proc: subprocess.Popen, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        if proc.poll() is not None or time.monotonic() > deadline:
            raise PipelineError(
                STAGE, f"the metrics exporter did not start:\n{_tail(path.parent / 'logs' / 'metrics.log')}", "see the server's logs/"
            )
        time.sleep(0.05)


def _torchserve_command(config: Path, mar: Path, name: str) -> list[str]:
    torchserve = Path(sys.executable).with_name("torchserve")
    return [
        str(torchserve),
        "--start",
        "--foreground",
        "--ncs",
        "--ts-config",
        str(config),
        # The frontend logs what happens to it, not every request (see the file's comment).
        "--log-config",
        str(importlib.resources.files(__package__ or "pipeline.serving.torchserve") / LOG_CONFIG),
        "--model-store",
        str(mar.parent.resolve()),
        "--models",
        f"{name}={mar.name}",
    ]


def _proxy_limits(mar: Path, props: dict[str, str]) -> proxy.Limits:
    """The proxy's limits: TorchServe's body cap and response timeout, and a generation model's streams, queue and timeout."""
    gen = read_contract(mar).get("generation") or {}
    return proxy.Limits(
        body_bytes=int(props["max_request_size"]),
        response_timeout_s=int(props["default_response_timeout"]),
        streams=gen.get("max_streams"),
        queued=gen.get("max_queued"),
        generation_timeout_s=gen.get("request_timeout_s"),
    )


def serve(settings: Settings, options: ServeOptions) -> ServerInfo:
    """`start` with the options the command line gives every backend."""
    return start(settings, auto_ports=options.auto_ports, timeout=options.timeout)


def served_line(info: ServerInfo, options: ServeOptions) -> str:
    workers = info.workers()
    device = "GPU" if any(w.get("gpu") for w in workers) else "CPU"
    return (
        f"{info.model} is served by TorchServe: {len(workers)} worker(s) READY (pid {', '.join(str(w['pid']) for w in workers)}; {device})"
    )


def _check_running(proc: subprocess.Popen, logs: Path) -> None:
    if proc.poll() is not None:
        raise PipelineError(
            STAGE,
            f"TorchServe exited with code {proc.returncode} during start-up:\n{_tail(logs / 'stdout.log')}",
            f"see {logs}/ts_log.log",
        )


def _wait_for_keys(info: ServerInfo, proc: subprocess.Popen, timeout: float) -> dict[str, str]:
    """The keys TorchServe writes at start (key_file.json), by API."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        _check_running(proc, Path(info.run_dir) / "logs")
        try:
            return {kind: entry["key"] for kind, entry in json.loads(info.key_file.read_text()).items()}
        except (FileNotFoundError, json.JSONDecodeError):  # not written yet, or half written
            time.sleep(0.1)
    raise PipelineError(STAGE, f"TorchServe wrote no {info.key_file} within {timeout:.0f}s", f"see {info.run_dir}/logs/ts_log.log")


def _wait_ready(info: ServerInfo, proc: subprocess.Popen, guard: subprocess.Popen, timeout: float) -> None:
    logs = Path(info.run_dir) / "logs"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if guard.poll() is not None:
            raise PipelineError(
                STAGE,
                f"HAProxy, in front of TorchServe, exited with code {guard.returncode} during start-up:\n{_tail(logs / 'proxy.log')}",
                f"see {logs}/proxy.log",
            )
        _check_running(proc, logs)
        model_log = logs / "model_log.log"
        if model_log.exists() and "Backend worker process died" in model_log.read_text(errors="replace"):
            _settled(model_log)  # the frontend logs the worker's traceback after that line, asynchronously
            raise PipelineError(
                STAGE,
                f"the {info.model} worker died while loading the model; model_log.log ends:\n{_tail(model_log)}",
                "fix the error above (a missing package in the worker's Python, a broken archive), then python -m pipeline serve",
            )
        if info.key_file.exists() and info.ready():
            return
        time.sleep(0.25)
    raise PipelineError(
        STAGE,
        f"{info.model} workers were not READY after {timeout:.0f}s; model_log.log ends:\n{_tail(logs / 'model_log.log')}",
        f"see {logs} for TorchServe's logs",
    )


def stop(settings: Settings, timeout: float = 60.0) -> bool:
    """Stop the model's server and every process it started; False if none was running."""
    _, layout = resolve(settings)
    info = load_info(layout)
    if info is None:
        return False
    procs = info.processes()
    try:
        os.killpg(info.pid, signal.SIGTERM)
    except ProcessLookupError:
        pass
    for p in procs:  # a worker that left the group still gets the signal
        try:
            p.terminate()
        except psutil.NoSuchProcess:
            pass
    alive = wait_ended(procs, timeout)
    for p in alive:
        try:
            p.kill()
        except psutil.NoSuchProcess:
            pass
    wait_ended(alive, 10)
    folder = Path(info.run_dir)
    for name in (
        "key_file.json",
        "server.json",
        "tmp/.model_server.pid",
        str(EXPORTER_SOCKET),
        *(api_socket(folder, kind).name for kind in HTTP_APIS),
    ):
        (folder / name).unlink(missing_ok=True)
    return bool(procs)
