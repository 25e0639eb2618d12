"""Serve an archive on Ray Serve: a local cluster on this machine, or a cluster you name.

Local (the default): a launcher process (`python -m pipeline.serving.ray.server`) starts
a one-node Ray cluster with every port on 127.0.0.1 and no dashboard, deploys the
application (`pipeline.serving.ray.app`) and holds the cluster until `stop`. With an
address (`--address` or RAY_ADDRESS), the application is deployed onto that cluster and
`stop` deletes it; the cluster itself is yours.

Ray's token mode is required either way. The local cluster always runs with it
(RAY_AUTH_MODE=token whatever the environment says) and a fresh token of its own; a
cluster given by address is refused unless this environment has RAY_AUTH_MODE=token and
the cluster's token (RAY_AUTH_TOKEN, or a 0600 file named by RAY_AUTH_TOKEN_PATH).

Each model's Ray server runs from `run/<model>/ray/`: key_file.json (the bearer token,
mode 0600, the same format as TorchServe's), ray_token (the local cluster's Ray token,
mode 0600; nothing is written to ~/.ray), server.json (what `stop` needs) and logs/.
Readiness means a real request was answered, not only that Serve says RUNNING: the request
`pipeline.serving.common.samples` builds for the model's inputs (a JPEG, a sentence, tensors).

The local cluster runs Serve's direct ingress (DIRECT_INGRESS_ENV): each replica serves HTTP
itself on 127.0.0.1, at a port of its own (30000 and up), so a request skips the proxy's
Python hop. That address is the one printed and recorded as `inference`; Serve's proxy
still listens on the HTTP port given (8000), routes to every replica and stays where it is
when a replica restarts, at a fraction of the throughput (docs/results/).
"""

from __future__ import annotations

import importlib.util
import json
import logging
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import psutil

from pipeline.artifacts import files
from pipeline.artifacts.archive import private_archive
from pipeline.artifacts.manifest import Manifest
from pipeline.errors import PipelineError
from pipeline.serving.backends import ServeOptions
from pipeline.serving.common import STAGE, history, metrics
from pipeline.serving.common.client import Endpoint, free_port, port_in_use
from pipeline.serving.common.processes import running, wait_ended
from pipeline.serving.common.samples import Request, sample_requests
from pipeline.serving.ray.app import QUIET, RayAppOptions, http_limits
from pipeline.settings import Layout, Settings, resolve

DEFAULT_HTTP_PORT = 8000
# Ray binds its servers to the node's address; with this set (Ray's own switch for
# single-machine clusters) the node's address is 127.0.0.1, so nothing listens outside.
LOOPBACK_ENV = {"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "RAY_USAGE_STATS_ENABLED": "0"}
RAY_TOKEN = "ray_token"  # the local cluster's control-plane token, beside key_file.json
# Serve's direct ingress, and what RAY_SERVE_THROUGHPUT_OPTIMIZED adds to it: gRPC between
# handles, the application's code on the replica's own event loop, and the GC frozen after
# start (ray/serve/_private/constants.py). Each ingress replica listens on http_options.host,
# 127.0.0.1 here. On one replica at 16 clients this served 11-18x what Serve's proxy did (docs/results/).
# That mode also holds a replica's log lines until 1000 have gathered; ours log only warnings and errors
# (a generation stopped early or failed: logs/serve/replica_*.log), so each is written as it happens.
DIRECT_INGRESS_ENV = {
    "RAY_SERVE_THROUGHPUT_OPTIMIZED": "1",
    "RAY_SERVE_ENABLE_DIRECT_INGRESS": "1",
    "RAY_SERVE_REQUEST_PATH_LOG_BUFFER_SIZE": "1",
    # A replica being replaced (update, rollback, a new config) stays reachable this long before it drains, for
    # load balancers to deregister it; Serve's default is 30 s. Here the clients that must not fail go through
    # Serve's proxy, whose router hears of the new replica set from the controller at once; a client on a
    # replica's own address reads the new one from server.json after the update (docs/operating.md).
    "RAY_SERVE_DIRECT_INGRESS_MIN_DRAINING_PERIOD_S": "5",
}


@dataclass(frozen=True)
class RayInfo(Endpoint):
    """A deployed Ray application, as recorded in run/<model>/ray/server.json."""

    model: str
    run_dir: str
    inference: str  # the first replica's own address under direct ingress, else Serve's proxy
    replicas: str
    proxy: str = ""  # Serve's HTTP proxy, http://127.0.0.1:<port>: routes to every replica
    # Each ingress replica's own address (direct ingress), as the cluster reported them at start.
    replica_urls: tuple[str, ...] = ()
    pid: int | None = None  # the launcher holding a local cluster; None on a cluster given by address
    address: str | None = None
    gcs_address: str | None = None  # the local cluster's, for update and rollback to join it
    # The local cluster's private folder (0700); Ray's temp folder, which every one of its
    # processes names, is ray/ inside it.
    temp_dir: str | None = None

    @property
    def metrics_url(self) -> str:
        """Serve's proxy: any replica answers for all of them on the local cluster."""
        return f"{self.proxy or self.inference}/metrics"

    def processes(self) -> list[psutil.Process]:
        """The launcher and every Ray process of its cluster (none for a cluster given by address)."""
        if self.pid is None:
            return []
        found = []
        for proc in psutil.process_iter(["pid", "cmdline"]):
            try:
                line = " ".join(proc.info["cmdline"] or ())
                if proc.info["pid"] == self.pid or (self.temp_dir and self.temp_dir + "/" in line):
                    found.append(proc)
            except (psutil.NoSuchProcess, psutil.AccessDenied):
                continue
        if psutil.pid_exists(self.pid):
            try:
                found.extend(psutil.Process(self.pid).children(recursive=True))
            except psutil.NoSuchProcess:
                pass
        return running({p.pid: p for p in found}.values())


def require_ray() -> None:
    """Ray Serve is an extra: say how to get it rather than fail inside a child process."""
    if importlib.util.find_spec("ray") is None or importlib.util.find_spec("ray.serve") is None:
        raise PipelineError(
            STAGE,
            "Ray Serve is not installed in this Python",
            "install the ray extra: pip install -c constraints.txt -e '.[ray]' (the Makefile's serve-ray does it)",
        )


def run_dir(layout: Layout) -> Path:
    return layout.root / "run" / layout.model / "ray"


def load_info(layout: Layout) -> RayInfo | None:
    path = run_dir(layout) / "server.json"
    if not path.exists():
        return None
    record = json.loads(path.read_text())
    return RayInfo(**{**record, "replica_urls": tuple(record.get("replica_urls", ()))})


def _write_private(path: Path, text: str) -> None:
    """`text` in a new file that is mode 0600 from its creation (never a file someone else made)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.unlink(missing_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)


def write_key_file(path: Path) -> None:
    """A fresh bearer token, readable by this user only."""
    _write_private(path, json.dumps({"inference": {"key": secrets.token_urlsafe(24)}}))


def write_ray_token(path: Path) -> None:
    """A fresh token for Ray's control plane, readable by this user only (Ray reads the file's first line)."""
    _write_private(path, secrets.token_hex(32) + "\n")


def local_cluster_env(token_file: Path, environ: Mapping[str, str]) -> dict[str, str]:
    """`environ` for the processes of a local cluster: every server on loopback, token mode on
    whatever `environ` says, and the token read from `token_file`.

    Ray takes RAY_AUTH_TOKEN before RAY_AUTH_TOKEN_PATH (AuthenticationTokenLoader::
    TryLoadTokenFromSources), so one inherited here is dropped; with the token found, Ray
    neither reads nor writes ~/.ray/auth_token (ensure_token_if_auth_enabled).
    """
    env = {k: v for k, v in environ.items() if k not in ("RAY_ADDRESS", "RAY_AUTH_TOKEN")}
    # Direct ingress unless `environ` says otherwise (RAY_SERVE_THROUGHPUT_OPTIMIZED=0, say, to compare).
    return {**DIRECT_INGRESS_ENV, **env, **LOOPBACK_ENV, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": str(token_file)}


def require_token_auth(environ: Mapping[str, str], cluster: str) -> None:
    """Refuse to join `cluster` unless Ray's token mode is on in `environ` and a private token is there.

    Ray looks in the same places (RAY_AUTH_TOKEN, the file RAY_AUTH_TOKEN_PATH names, then
    ~/.ray/auth_token); a token file that other users can read is refused, as a key file is.
    """
    fix = (
        "set RAY_AUTH_MODE=token and RAY_AUTH_TOKEN to the cluster's token (or RAY_AUTH_TOKEN_PATH to a file "
        "of mode 0600 holding it), as on every node of the cluster, then run again"
    )
    mode = environ.get("RAY_AUTH_MODE", "")
    if mode.lower() != "token":
        raise PipelineError(
            STAGE, f"Ray's token mode is off (RAY_AUTH_MODE={mode or 'unset'}): refusing to deploy onto {cluster} without it", fix
        )
    if environ.get("RAY_AUTH_TOKEN", "").strip():
        return
    named = environ.get("RAY_AUTH_TOKEN_PATH")
    path = Path(named) if named else Path(environ.get("HOME", "~")).expanduser() / ".ray" / "auth_token"
    try:
        mode_bits = path.stat().st_mode & 0o777
        token = (path.read_text(errors="replace").splitlines() or [""])[0].strip()
    except OSError:
        mode_bits, token = 0, ""
    if not token:
        raise PipelineError(STAGE, f"no Ray token for {cluster}: RAY_AUTH_TOKEN is unset and {path} is missing or empty", fix)
    if mode_bits & 0o077:
        raise PipelineError(STAGE, f"the Ray token file {path} is open to other users (mode {mode_bits:o})", f"chmod 600 {path}")


ARCHIVES = "archives"  # in the run folder: the server's own copy of each version it served (rollback serves them again)
APP = "app.json"  # in the run folder: the application's options as deployed now (update changes only the archive)


def served_archive(settings: Settings, folder: Path) -> tuple[history.Served, str]:
    """The project's verified archive, copied into the run folder's archives/ and checked there; and its absolute path."""
    spec, layout = resolve(settings)
    store = folder / ARCHIVES
    store.mkdir(mode=0o700, parents=True, exist_ok=True)
    mar, rec, version = private_archive(Manifest(layout.root, spec.name, settings.model), settings.variant, STAGE, store)
    return history.Served(version, f"{ARCHIVES}/{mar.name}", rec.sha256), str(mar.resolve())


def deploy(options: RayAppOptions, name: str, http_port: int | None, proxy_location: str = "EveryNode") -> None:
    """Deploy onto the Ray cluster this process is connected to; returns once Serve has it RUNNING.

    `proxy_location="HeadOnly"` where several nodes share one address (a multi-node
    cluster on one machine): their proxies would share the port, and the kernel would
    hand connections to a proxy on a node that may die.
    """
    from ray import serve

    from pipeline.serving.ray.app import build

    if http_port is not None:
        http_options = {"host": "127.0.0.1", "port": http_port, **http_limits(options.archive)}
        serve.start(http_options=http_options, proxy_location=proxy_location, logging_config=QUIET)
    serve.run(build(options.to_args()), name=name, route_prefix="/", blocking=False, logging_config=QUIET)
    # serve.run returns once the application is RUNNING: replicas constructed and healthy.


def replica_targets(name: str, proxy_port: int, expected: int, timeout: float = 30.0) -> list[Any]:
    """Each of the application's ingress replicas where the cluster runs direct ingress, as Serve's
    `Target` (ip, port, and `name`, the replica's actor); none where it does not (then Serve's
    controller names only its proxies).

    Ray has no public call for them: this asks the controller what it tells its own HTTP
    proxies (`ServeController.get_target_groups`), waiting up to `timeout` for `expected` of them.
    """
    import ray
    from ray.serve._private.common import RequestProtocol
    from ray.serve._private.constants import SERVE_CONTROLLER_NAME, SERVE_NAMESPACE

    controller = ray.get_actor(SERVE_CONTROLLER_NAME, namespace=SERVE_NAMESPACE)
    deadline = time.monotonic() + timeout
    while True:
        groups: list[Any] = ray.get(controller.get_target_groups.remote(name))
        targets = [t for g in groups if g.protocol == RequestProtocol.HTTP for t in g.targets]
        replicas = sorted((t for t in targets if t.port != proxy_port), key=lambda t: (t.ip, t.port))
        # Only the proxy named: no direct ingress on this cluster (a RUNNING app's replicas have their ports).
        direct_ingress_off = not replicas and any(t.port == proxy_port for t in targets)
        if len(replicas) >= expected or direct_ingress_off or time.monotonic() > deadline:
            return replicas
        time.sleep(0.2)


def replica_addresses(name: str, proxy_port: int, expected: int, timeout: float = 30.0) -> list[str]:
    """`replica_targets` as URLs, http://<ip>:<port>."""
    return [f"http://{t.ip}:{t.port}" for t in replica_targets(name, proxy_port, expected, timeout)]


def expected_replicas(options: RayAppOptions) -> int:
    return options.min_replicas if options.replicas == "auto" else int(options.replicas)


def start(
    settings: Settings,
    replicas: str = "1",
    address: str | None = None,
    auto_ports: bool = False,
    timeout: float = 120.0,
    **extra: Any,
) -> RayInfo:
    """Deploy the archive on Ray; return once a real request has been answered."""
    spec, layout = resolve(settings)
    require_ray()
    if address:  # refused before anything is written (_connect checks it again, for stop too)
        require_token_auth(os.environ, f"the Ray cluster at {address}")
    folder = run_dir(layout)
    existing = load_info(layout)
    if existing is not None and (existing.processes() or existing.address):
        raise PipelineError(
            STAGE,
            f"{spec.name} is already served on Ray at {existing.inference}",
            "use it, or stop it first: python -m pipeline stop --on ray",
        )
    (folder / "logs").mkdir(parents=True, exist_ok=True)
    (folder / "server.json").unlink(missing_ok=True)
    write_key_file(folder / "key_file.json")
    served, path = served_archive(settings, folder)
    local = {} if address else {"metrics_dir": str(folder / "metrics")}  # every replica of a local cluster can write there
    if not address:
        metrics.prepare(folder / "metrics")
    options = RayAppOptions.from_args(
        {"archive": path, "sha256": served.sha256, "token_file": str(folder / "key_file.json"), "replicas": replicas, **local, **extra}
    )
    files.write_json(folder / APP, options.to_args())
    port = free_port() if auto_ports else DEFAULT_HTTP_PORT
    name = layout.served_name(settings.variant)
    if address:
        info = _deploy_to(address, options, name, folder, port, replicas)
    else:
        info = _launch(options, name, folder, port, replicas, timeout)
    try:
        _wait_answered(info, sample_requests(spec)[0], timeout)
    except BaseException:
        stop(settings)
        raise
    history.record(folder, served)
    return info


def serve(settings: Settings, options: ServeOptions) -> RayInfo:
    """`start` with the options the command line gives every backend."""
    extra = {"min_replicas": options.min_replicas, "max_replicas": options.max_replicas} if options.replicas == "auto" else {}
    return start(
        settings, replicas=options.replicas, address=options.address, auto_ports=options.auto_ports, timeout=options.timeout, **extra
    )


def served_line(info: RayInfo, options: ServeOptions) -> str:
    where = f"the cluster at {info.address}" if info.address else "a local Ray cluster on 127.0.0.1"
    auto = options.replicas == "auto"
    scale = f"autoscaling {options.min_replicas}-{options.max_replicas} replicas" if auto else f"{options.replicas} replica(s)"
    line = f"{info.model} is served by Ray Serve on {where}: {scale}"
    if not info.replica_urls:
        return f"{line}, through Serve's proxy at {info.proxy or info.inference}"
    each = ", ".join(info.replica_urls)
    return (
        f"{line}, each at its own address ({each}: direct ingress, the fastest); Serve's proxy at {info.proxy} "
        "spreads requests over every replica and keeps its address when one restarts"
    )


def refuses_token(address: str, wait_s: float = 3.0) -> bool:
    """Whether the cluster at `address` answers that this process's token is not its own, in one attempt of `wait_s`
    at most. ray.init retries every failure to reach the cluster for about 20 s, a refused token too; an address with
    no cluster, or one slower than `wait_s` to answer, is left to ray.init and its own message."""
    from ray._raylet import GcsClient  # type: ignore[attr-defined]  # a compiled module; its stub omits the class
    from ray.exceptions import AuthenticationError

    answered = threading.Event()
    refused = []

    def attempt() -> None:
        try:
            GcsClient(address=address)
        except AuthenticationError:
            refused.append(True)
        except Exception:  # anything else: ray.init tries again and says what went wrong
            pass
        answered.set()

    threading.Thread(target=attempt, daemon=True).start()  # blocks while no one answers at the address
    return answered.wait(wait_s) and bool(refused)


def _connect(address: str) -> None:
    """Join the cluster at `address` as a driver (in token mode only), or say why not."""
    import ray
    from ray.exceptions import AuthenticationError

    require_token_auth(os.environ, f"the Ray cluster at {address}")
    refused = PipelineError(
        STAGE,
        f"the Ray cluster at {address} refused this RAY_AUTH_TOKEN: it is not the cluster's token",
        "set RAY_AUTH_MODE=token and RAY_AUTH_TOKEN to the cluster's token (as on every node), then run again",
    )
    if refuses_token(address):
        raise refused
    try:
        ray.init(address=address, logging_level=logging.ERROR, log_to_driver=False)
    except AuthenticationError:
        raise refused from None
    except ConnectionError as exc:
        raise PipelineError(
            STAGE,
            f"could not join the Ray cluster at {address}: {exc} (no cluster there, or it refused this RAY_AUTH_TOKEN)",
            "check the address (RAY_ADDRESS or --address) and that RAY_AUTH_MODE=token and RAY_AUTH_TOKEN match the cluster's; "
            "unset the address to start a local cluster",
        ) from None


def _deploy_to(address: str, options: RayAppOptions, name: str, folder: Path, port: int, replicas: str) -> RayInfo:
    import ray

    _connect(address)
    try:
        deploy(options, name, port)
        urls = replica_addresses(name, port, expected_replicas(options))
    finally:
        ray.shutdown()
    proxy = f"http://127.0.0.1:{port}"
    info = RayInfo(
        model=name,
        run_dir=str(folder),
        inference=urls[0] if urls else proxy,
        replicas=replicas,
        proxy=proxy,
        replica_urls=tuple(urls),
        address=address,
    )
    files.write_json(folder / "server.json", asdict(info))
    return info


def _launch(options: RayAppOptions, name: str, folder: Path, port: int, replicas: str, timeout: float) -> RayInfo:
    if port_in_use(port):
        raise PipelineError(
            STAGE,
            f"port {port} is already in use on 127.0.0.1",
            "stop what holds it (python -m pipeline stop --on ray), or use --ports auto",
        )
    status = folder / "launcher.json"
    status.unlink(missing_ok=True)
    config = folder / "launch.json"
    # Short and in /tmp: Ray's sockets live under it, and a Unix socket path has 107 bytes.
    # mkdtemp makes it 0700. Ray makes its temp folder and the session's, sockets/ and logs/
    # in it 0777 (try_to_create_directory in ray/_common/utils.py), so Ray gets a folder
    # inside this one: what Ray opens to everyone stays behind a door only we can pass.
    temp_dir = tempfile.mkdtemp(prefix="pipeline-ray-")
    ray_temp = str(Path(temp_dir) / "ray")
    files.write_json(config, {"options": options.to_args(), "name": name, "http_port": port, "status": str(status), "temp_dir": ray_temp})
    write_ray_token(folder / RAY_TOKEN)
    env = local_cluster_env(folder / RAY_TOKEN, os.environ)
    # Each replica unpacks the archive into a folder of its own (app.ModelServer), and Ray kills replicas
    # at stop without running their cleanup: their temporary files go in this folder, which stop removes.
    replicas_tmp = Path(temp_dir) / "tmp"
    replicas_tmp.mkdir(mode=0o700)
    env["TMPDIR"] = str(replicas_tmp)
    with open(folder / "logs" / "launcher.log", "ab") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "pipeline.serving.ray.server", str(config)],
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=env,
            start_new_session=True,
        )
    proxy = f"http://127.0.0.1:{port}"
    info = RayInfo(model=name, run_dir=str(folder), inference=proxy, replicas=replicas, proxy=proxy, pid=proc.pid, temp_dir=temp_dir)
    files.write_json(folder / "server.json", asdict(info))
    deadline = time.monotonic() + timeout
    while not status.exists():
        if proc.poll() is not None or time.monotonic() > deadline:
            log = (folder / "logs" / "launcher.log").read_text(errors="replace").strip().splitlines()
            tail = "\n".join(f"  | {line}" for line in log[-15:])
            stop_info(info)
            why = f"exited with code {proc.returncode}" if proc.returncode is not None else f"was not deployed after {timeout:.0f}s"
            raise PipelineError(STAGE, f"the Ray launcher {why}:\n{tail}", f"see {folder / 'logs'}/launcher.log")
        time.sleep(0.2)
    launched = json.loads(status.read_text())
    if "error" in launched:
        stop_info(info)
        raise PipelineError(STAGE, f"deploying {name} on Ray failed: {launched['error']}", f"see {folder / 'logs'}/launcher.log")
    urls = tuple(launched.get("replica_urls", ()))
    info = replace(info, inference=urls[0] if urls else info.proxy, replica_urls=urls, gcs_address=launched.get("gcs_address"))
    files.write_json(folder / "server.json", asdict(info))
    return info


def _wait_answered(info: RayInfo, request: Request, timeout: float) -> None:
    """Until `request` (an image, a text or tensors, whatever the model takes) gets a 200."""
    deadline = time.monotonic() + timeout
    last = "no answer"
    while time.monotonic() < deadline:
        try:
            status, answer = info.predict(request.body, content_type=request.content_type, timeout=10)
            if status == 200:
                return
            last = f"HTTP {status}: {answer[:200]!r}"
        except OSError as exc:
            last = str(exc)
        time.sleep(0.2)
    raise PipelineError(
        STAGE, f"{info.model} on Ray did not answer a request within {timeout:.0f}s (last: {last})", f"see {info.run_dir}/logs"
    )


def stop_info(info: RayInfo, timeout: float = 30.0) -> bool:
    """Stop a launcher and its cluster, or delete the application from a cluster given by address."""
    if info.address:
        import ray
        from ray import serve

        _connect(info.address)
        try:
            serve.delete(info.model)
        finally:
            ray.shutdown()
        stopped = True
    else:
        procs = info.processes()
        for p in procs:
            if p.pid == info.pid:
                try:
                    p.send_signal(signal.SIGTERM)  # the launcher shuts Serve and Ray down
                except psutil.NoSuchProcess:
                    pass
        alive = wait_ended([p for p in procs if p.pid == info.pid], timeout)
        for p in alive + [p for p in procs if p.pid != info.pid]:
            try:
                p.kill()
            except psutil.NoSuchProcess:
                pass
        wait_ended(procs, 10)
        if info.temp_dir:
            shutil.rmtree(info.temp_dir, ignore_errors=True)
        stopped = bool(procs)
    folder = Path(info.run_dir)
    for name in ("key_file.json", RAY_TOKEN, "server.json", "launcher.json", APP, "roll.json", "rolled.json"):
        (folder / name).unlink(missing_ok=True)
    return stopped


def stop(settings: Settings) -> bool:
    """Stop the model's Ray application; False if none was running."""
    _, layout = resolve(settings)
    info = load_info(layout)
    return stop_info(info) if info is not None else False


def update(settings: Settings, timeout: float = 120.0) -> tuple[str, str]:
    """Roll the running application over to the model's current verified archive with Serve's own rolling update:
    new replicas start (each checks the archive), and the old ones leave once they are healthy, after their requests
    finish. (before, after) versions. The archive is checked here first: a refused one changes nothing."""
    _, layout = resolve(settings)
    info = _running(settings)
    served, path = served_archive(settings, run_dir(layout))
    return _roll(info, served, path, timeout)


def rollback(settings: Settings, timeout: float = 120.0) -> tuple[str, str]:
    """Roll back to the version served before the current one, from the run folder's copy, checked again."""
    _, layout = resolve(settings)
    info = _running(settings)
    folder = run_dir(layout)
    previous, copy = history.rollback_target(folder, info.model, _current(folder), "python -m pipeline update --on ray")
    return _roll(info, previous, str(copy.resolve()), timeout)


def _running(settings: Settings) -> RayInfo:
    spec, layout = resolve(settings)
    require_ray()
    info = load_info(layout)
    if info is None or not (info.address or info.processes()):
        raise PipelineError(
            STAGE,
            f"{spec.name} is not served on Ray here",
            f"start it with python -m pipeline serve --on ray --model {settings.model}; update moves a running application",
        )
    return info


def _current(folder: Path) -> str:
    options = RayAppOptions.from_args(json.loads((folder / APP).read_text()))
    return next((s.version for s in history.read(folder) if s.sha256 == options.sha256), "unknown")


def _roll(info: RayInfo, target: history.Served, path: str, timeout: float) -> tuple[str, str]:
    """Deploy `target` over the running application, from a child process joined to the cluster (Ray reads its
    environment once, at import: the local cluster's loopback and token settings must be there from the start)."""
    folder = Path(info.run_dir)
    before = _current(folder)
    if before == target.version:
        return before, before
    options = RayAppOptions.from_args({**json.loads((folder / APP).read_text()), "archive": path, "sha256": target.sha256})
    port = int(info.proxy.rsplit(":", 1)[1]) if info.proxy else DEFAULT_HTTP_PORT
    job = folder / "roll.json"
    result = folder / "rolled.json"
    result.unlink(missing_ok=True)
    files.write_json(
        job, {"options": options.to_args(), "name": info.model, "address": info.address, "gcs": info.gcs_address, "port": port}
    )
    env = dict(os.environ) if info.address else local_cluster_env(folder / RAY_TOKEN, os.environ)
    with open(folder / "logs" / "update.log", "ab") as out:
        proc = subprocess.run(
            [sys.executable, "-m", "pipeline.serving.ray.server", "--roll", str(job)],
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=env,
            timeout=timeout + 60,
            check=False,
        )
    rolled = json.loads(result.read_text()) if result.exists() else {"error": f"exited with code {proc.returncode}"}
    if "error" in rolled:
        raise PipelineError(
            STAGE,
            f"Ray Serve did not take version {target.version}: {rolled['error']}",
            f"see {folder / 'logs'}/update.log and logs/serve/; Serve keeps the old replicas until new ones are healthy",
        )
    urls = tuple(rolled["replica_urls"])
    files.write_json(folder / APP, options.to_args())
    history.record(folder, target)
    files.write_json(folder / "server.json", asdict(replace(info, inference=urls[0] if urls else info.proxy, replica_urls=urls)))
    return before, target.version


def _roller(job_path: str) -> int:
    """The child of `_roll`: join the cluster, run Serve's rolling update, report the new replicas' addresses."""
    import ray

    job = json.loads(Path(job_path).read_text())
    result = Path(job_path).with_name("rolled.json")
    options = RayAppOptions.from_args(job["options"])
    try:
        if job["address"]:
            _connect(job["address"])
        else:
            ray.init(address=job["gcs"], logging_level=logging.ERROR, log_to_driver=False)
        try:
            deploy(options, job["name"], None)  # returns once the new replicas are RUNNING; the old ones then drain and go
            urls = replica_addresses(job["name"], job["port"], expected_replicas(options))
        finally:
            ray.shutdown()
    except Exception as exc:
        files.write_json(result, {"error": f"{type(exc).__name__}: {exc}"})
        raise
    files.write_json(result, {"replica_urls": urls})
    return 0


def _launcher(config_path: str) -> int:
    """Hold a local Ray cluster serving the application until SIGTERM, then end it."""
    import ray

    config = json.loads(Path(config_path).read_text())
    status = Path(config["status"])
    stopping = False

    def on_term(signum, frame):
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGINT, on_term)
    try:
        require_token_auth(os.environ, "the local cluster")  # set by _launch; checked again before Ray starts
    except PipelineError as exc:
        files.write_json(status, {"error": f"{exc.problem}; {exc.fix}"})
        return 1
    ray.init(include_dashboard=False, logging_level=logging.WARNING, object_store_memory=256 << 20, _temp_dir=config["temp_dir"])
    # Again: ray.init puts Ray's own handlers in place, which print a stack trace and end the process at once, with the
    # cluster left for stop to kill.
    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGINT, on_term)
    try:
        options = RayAppOptions.from_args(config["options"])
        deploy(options, config["name"], config["http_port"])
        urls = replica_addresses(config["name"], config["http_port"], expected_replicas(options))
        # Every server of this cluster is on loopback (LOOPBACK_ENV), whatever address the node names itself by.
        gcs = "127.0.0.1:" + ray.get_runtime_context().gcs_address.rsplit(":", 1)[1]
        files.write_json(status, {"deployed": True, "pid": os.getpid(), "replica_urls": urls, "gcs_address": gcs})
        while not stopping:
            time.sleep(0.2)
    except Exception as exc:
        files.write_json(status, {"error": f"{type(exc).__name__}: {exc}"})
        raise
    finally:
        # The cluster ends with its driver, the application with it: requests in flight are cut, as TorchServe's stop
        # cuts them (update and rollback are the moves that let them finish). serve.shutdown() first would wait out the
        # replicas' draining (over 7 s here) for nothing.
        ray.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(_roller(sys.argv[2]) if sys.argv[1] == "--roll" else _launcher(sys.argv[1]))
