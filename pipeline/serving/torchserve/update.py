"""A running TorchServe moved to the model's current verified archive with no request failing, and back.

`update` (python -m pipeline update):
1. the model's verified archive is copied into the server's model_store/ as `<model>-<version>.mar` and
   checked there, as at `serve` (its hash against the manifest, its members, its handler); a refused
   archive changes nothing, and the running version goes on answering;
2. it is registered as a new version of the model through the management API's Unix socket (the
   proxy refuses that call on the management port), with as many workers as the running version has;
3. once its workers are READY, it answers the model's sample request at its own versioned route,
   or it is unregistered again and the update refused;
4. it becomes the default: new requests go to it from here;
5. the old version's requests drain: none waiting in its queue, none in its workers (the workers'
   in-flight gauge, `pipeline.serving.common.metrics`), and neither for longer than a batch's wait,
   so a batch still being gathered is seen; then the old version is unregistered. TorchServe's
   unregister fails a request still in a worker ("Worker scaled down"), which is why this waits.

`rollback` moves to the version served before the current one, from its copy in model_store/,
checked again against the sha256 recorded when it was first served.

The run folder's versions.json (`pipeline.serving.common.history`) records what the server has served.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from urllib.parse import quote

from pipeline.artifacts.archive import private_archive
from pipeline.artifacts.manifest import Manifest
from pipeline.errors import PipelineError
from pipeline.serving.common import STAGE, history, metrics
from pipeline.serving.common.client import http
from pipeline.serving.common.history import Served
from pipeline.serving.common.samples import sample_requests
from pipeline.serving.torchserve.server import METRICS_DIR, ServerInfo, api_socket, load_info, run_dir
from pipeline.settings import Settings, resolve

DRAIN_MARGIN_S = 0.5  # beyond the archive's batch delay: how long the old version must stay idle before it goes


def update(settings: Settings, timeout: float = 120.0) -> tuple[str, str]:
    """Move the running server to the model's current verified archive (see the module's docstring)."""
    spec, layout = resolve(settings)
    info = running(settings)
    folder = run_dir(layout)
    mar, rec, version = private_archive(Manifest(layout.root, spec.name, settings.model), settings.variant, STAGE, folder / "model_store")
    return switch(settings, info, Served(version, f"model_store/{mar.name}", rec.sha256), timeout)


def rollback(settings: Settings, timeout: float = 120.0) -> tuple[str, str]:
    """Move the running server back to the version it served before the current one, while its archive is on disk."""
    _, layout = resolve(settings)
    info = running(settings)
    folder = run_dir(layout)
    previous, _ = history.rollback_target(folder, info.model, default_version(info), "python -m pipeline update")
    return switch(settings, info, previous, timeout)


def running(settings: Settings) -> ServerInfo:
    spec, layout = resolve(settings)
    info = load_info(layout)
    if info is None or not info.processes():
        raise PipelineError(
            STAGE,
            f"no TorchServe server for {spec.name} is running here",
            f"start one with python -m pipeline serve --model {settings.model}; update moves a running server",
        )
    return info


def switch(settings: Settings, info: ServerInfo, target: Served, timeout: float) -> tuple[str, str]:
    """Register `target`, check it answers, make it the default, drain the old version and unregister it."""
    old = default_version(info)
    folder = Path(info.run_dir)
    if old == target.version:
        history.record(folder, target)
        return old, old
    described = describe(info, old)
    workers = max(1, len(described.get("workers", [])))
    name = quote(info.model, safe="")
    status, body = management(
        info,
        "POST",
        f"/models?url={quote(Path(target.archive).name)}&model_name={name}&initial_workers={workers}&synchronous=true",
        timeout,
    )
    if status != 200:
        raise PipelineError(
            STAGE,
            f"TorchServe did not register version {target.version}: {status} {body.decode(errors='replace')[:300]}",
            f"version {old} goes on serving; see {folder}/logs/ts_log.log and model_log.log",
        )
    try:
        wait_ready(info, target.version, timeout)
        smoke(settings, info, target.version)
    except BaseException:
        management(info, "DELETE", f"/models/{name}/{target.version}", timeout)
        raise
    status, body = management(info, "PUT", f"/models/{name}/{target.version}/set-default", timeout)
    if status != 200:
        management(info, "DELETE", f"/models/{name}/{target.version}", timeout)
        raise PipelineError(
            STAGE, f"TorchServe did not make {target.version} the default: {body.decode(errors='replace')[:300]}", "see ts_log.log"
        )
    history.record(folder, target)
    drain(info, old, batch_delay_s(described), timeout)
    management(info, "DELETE", f"/models/{name}/{old}", timeout)
    return old, target.version


def management(info: ServerInfo, method: str, path: str, timeout: float) -> tuple[int, bytes]:
    """A call on TorchServe's management API, at its Unix socket in the run folder (not through the proxy)."""
    socket = api_socket(Path(info.run_dir), "management")
    return http(method, f"http://localhost{path}", token=info.token("management"), timeout=timeout, unix_socket=socket)


def describe(info: ServerInfo, version: str | None = None) -> dict:
    """The management API's description of the model's default version, or of `version`."""
    path = f"/models/{quote(info.model, safe='')}" + (f"/{quote(version, safe='')}" if version else "")
    status, body = management(info, "GET", path, 10)
    if status != 200:
        raise PipelineError(STAGE, f"TorchServe could not describe {info.model}: {status} {body[:200]!r}", f"see {info.run_dir}/logs")
    described = json.loads(body)
    return described[0] if isinstance(described, list) else described


def default_version(info: ServerInfo) -> str:
    return str(describe(info)["modelVersion"])


def batch_delay_s(described: dict) -> float:
    return float(described.get("maxBatchDelay") or 0) / 1000


def wait_ready(info: ServerInfo, version: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        workers = describe(info, version).get("workers", [])
        if workers and all(w.get("status") == "READY" for w in workers):
            return
        time.sleep(0.2)
    raise PipelineError(STAGE, f"version {version}'s workers were not READY after {timeout:.0f}s", f"see {info.run_dir}/logs/model_log.log")


def smoke(settings: Settings, info: ServerInfo, version: str) -> None:
    """The new version answers the model's sample request at its own route, before any client is sent to it."""
    spec, _ = resolve(settings)
    request, _ = sample_requests(spec)
    socket = api_socket(Path(info.run_dir), "inference")
    path = f"/predictions/{quote(info.model, safe='')}/{quote(version, safe='')}"
    status, body = http(
        "POST", f"http://localhost{path}", request.body, info.token("inference"), request.content_type, 60, unix_socket=socket
    )
    if status != 200:
        raise PipelineError(
            STAGE,
            f"version {version} answered the sample request with {status}: {body.decode(errors='replace')[:300]}",
            "the running version goes on serving; fix the model and rebuild, then update again",
        )


def drain(info: ServerInfo, version: str, batch_delay: float, timeout: float) -> None:
    """Wait until `version` has no request waiting or in a worker, for longer than a batch takes to gather."""
    folder = Path(info.run_dir) / METRICS_DIR
    window = batch_delay + DRAIN_MARGIN_S
    deadline, idle_since = time.monotonic() + timeout, None
    while time.monotonic() < deadline:
        pending = int(describe(info, version).get("jobQueueStatus", {}).get("pendingRequests", 0))
        busy = metrics.in_flight(folder, info.model, version)
        now = time.monotonic()
        if pending or busy:
            idle_since = None
        elif idle_since is None:
            idle_since = now
        elif now - idle_since >= window:
            return
        time.sleep(0.05)
    raise PipelineError(
        STAGE,
        f"version {version} still had requests after {timeout:.0f}s; it was left registered (the new version is the default)",
        "run python -m pipeline update again to finish",
    )
