"""Kill a Ray worker node under load and measure what the Ray Serve application loses.

A multi-node cluster on this one machine (`ray.cluster_utils.Cluster`): a head with no
CPUs (it runs the controller and the HTTP proxy, never a replica) and two worker nodes.
Two replicas are deployed and must land on both workers. Closed-loop clients send
requests through the proxy; one worker node is killed without warning while they run.
Every request's start, end and status are kept, so the report can say which failures
were in flight at the kill, how long until the application served from a replacement
replica again, and whether any request after that failed.

Beside them, one client at each replica's own address (direct ingress, what `serve --on
ray` prints): the report says what the client holding the killed replica's address got
after the kill, and whether the other replica's client lost anything.
"""

from __future__ import annotations

import http.client
import json
import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil

from pipeline.artifacts import files
from pipeline.errors import PipelineError
from pipeline.serving.common.client import free_port
from pipeline.serving.common.processes import wait_ended
from pipeline.serving.ray import server as ray_server
from pipeline.serving.ray.app import RayAppOptions
from pipeline.settings import Settings, resolve

RETRY_AFTER_S = 0.1  # a client whose connection failed waits this long before its next request


@dataclass
class Traffic:
    """Closed-loop clients against one URL; every request as (start, end, status)."""

    host: str
    port: int
    path: str
    body: bytes
    token: str
    records: list[tuple[float, float, int]] = field(default_factory=list)
    stop: threading.Event = field(default_factory=threading.Event)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def client(self) -> None:
        conn = http.client.HTTPConnection(self.host, self.port, timeout=30)
        headers = {"Authorization": f"Bearer {self.token}", "Content-Type": "application/json"}
        while not self.stop.is_set():
            start = time.monotonic()
            try:
                conn.request("POST", self.path, self.body, headers)
                response = conn.getresponse()
                response.read()
                status = response.status
            except (OSError, http.client.HTTPException):
                status = 0
                conn.close()
                conn = http.client.HTTPConnection(self.host, self.port, timeout=30)
            with self.lock:
                self.records.append((start, time.monotonic(), status))
            if status == 0:
                time.sleep(RETRY_AFTER_S)
        conn.close()

    def run(self, clients: int) -> list[threading.Thread]:
        threads = [threading.Thread(target=self.client, daemon=True) for _ in range(clients)]
        for t in threads:
            t.start()
        return threads


def replica_nodes(app: str) -> dict[str, str]:
    """Replica actor name -> node id, for the application's live replicas."""
    from ray.util.state import list_actors

    actors = list_actors(filters=[("state", "=", "ALIVE")], limit=1000)
    return {str(a.name): str(a.node_id) for a in actors if a.class_name and a.class_name.startswith(f"ServeReplica:{app}:")}


def power_off(node) -> float:
    """SIGKILL every process of a node at once, as a power loss would; the moment it happened.

    `Cluster.remove_node` kills the raylet first and the node's workers exit only when
    they notice, a second or two later, so a replica keeps taking requests it will never
    answer. A dead machine does not do that.
    """
    procs = []
    for infos in node.all_processes.values():
        for info in infos:
            try:
                proc = psutil.Process(info.process.pid)
                procs += [proc, *proc.children(recursive=True)]
            except psutil.NoSuchProcess:
                continue
    for proc in procs:
        try:
            proc.suspend()  # first stop them all, so none acts on another's death
        except psutil.NoSuchProcess:
            pass
    moment = time.monotonic()
    for proc in procs:
        try:
            proc.kill()
        except psutil.NoSuchProcess:
            pass
    wait_ended(procs, 10)
    return moment


def running_replicas(app: str) -> int:
    from ray import serve

    status = serve.status().applications.get(app)
    if status is None:
        return 0
    return sum(n for d in status.deployments.values() for state, n in d.replica_states.items() if state == "RUNNING")


def node_kill(
    settings: Settings, work: Path, clients: int = 4, before_s: float = 3.0, after_s: float = 5.0, recover_limit_s: float = 30.0
) -> dict[str, Any]:
    """The figures of one node kill under load (see the module's docstring).

    The steps: start the cluster, deploy two replicas, start the clients, power a worker off,
    wait for a replacement replica, stop the clients, shut everything down, count."""
    import ray
    from ray import serve
    from ray.cluster_utils import Cluster

    spec, _ = resolve(settings)
    key_file = work / "key_file.json"
    ray_server.write_key_file(key_file)
    served, archive = ray_server.served_archive(settings, work)
    options = RayAppOptions.from_args(
        {"archive": archive, "sha256": served.sha256, "token_file": str(key_file), "replicas": "2", "num_cpus": 1}
    )
    node_args: dict[str, Any] = {"include_dashboard": False, "object_store_memory": 128 << 20}
    # The head keeps the dashboard, on loopback, for Ray's state API (where each replica runs).
    head_args = {"num_cpus": 0, **node_args, "include_dashboard": True, "dashboard_host": "127.0.0.1", "dashboard_port": free_port()}
    cluster = Cluster(initialize_head=True, connect=True, head_node_args=head_args)
    figures: dict[str, Any] = {"nodes": "head (0 CPUs: controller and proxy) + 2 workers (2 CPUs each)", "replicas": 2, "clients": clients}
    try:
        workers = [cluster.add_node(num_cpus=2, **node_args) for _ in range(2)]
        cluster.wait_for_nodes()
        port = free_port()
        started = time.monotonic()
        ray_server.deploy(options, spec.name, port, proxy_location="HeadOnly")
        figures["deploy_s"] = time.monotonic() - started
        placed = replica_nodes(spec.name)
        worker_ids = {w.node_id: f"worker {i + 1}" for i, w in enumerate(workers)}
        figures["placement"] = sorted(worker_ids.get(n, "head") for n in placed.values())
        figures["replicas_on_both_workers"] = set(placed.values()) == set(worker_ids)

        traffic, direct, threads = _start_traffic(spec.name, spec.example_request, key_file, port, placed, clients)
        time.sleep(before_s)
        victim = next(w for w in workers if w.node_id in placed.values())
        kill_at = power_off(victim)
        cluster.remove_node(victim, allow_graceful=False)  # Ray's bookkeeping; its processes are gone already
        figures["killed"] = worker_ids[victim.node_id]
        recovered_at = _wait_for_replacement(spec.name, placed, kill_at, recover_limit_s)
        time.sleep(after_s)
        _stop_traffic([traffic, *(d for _, d in direct)], threads)
        records = list(traffic.records)
        replacement = replica_nodes(spec.name)
    finally:
        try:
            serve.shutdown()
        finally:
            ray.shutdown()
            cluster.shutdown()
    figures.update(proxy_figures(records, kill_at, recovered_at))
    figures["replacement_placement"] = sorted(worker_ids.get(n, "head") for n in replacement.values())
    figures["failures"] = [
        {"start_s": round(s - kill_at, 3), "end_s": round(e - kill_at, 3), "status": st} for s, e, st in records if st != 200
    ]
    figures["direct"] = direct_figures(direct, victim.node_id, kill_at)
    return figures


def _start_traffic(
    app: str, example: Any, key_file: Path, port: int, placed: dict[str, str], clients: int
) -> tuple[Traffic, list[tuple[str, Traffic]], list[threading.Thread]]:
    """Clients through the proxy, and one at each replica's own address: (proxy traffic, (node, direct traffic), threads)."""
    body, token = json.dumps(example).encode(), json.loads(key_file.read_text())["inference"]["key"]
    traffic = Traffic("127.0.0.1", port, f"/predictions/{app}", body, token)
    threads = traffic.run(clients)
    # One client at each replica's own address: which node's replica it reaches is known.
    direct = [
        (placed.get(t.name, ""), Traffic(t.ip, t.port, f"/predictions/{app}", body, token))
        for t in ray_server.replica_targets(app, port, 2)
    ]
    threads += [t for _, d in direct for t in d.run(1)]
    return traffic, direct, threads


def _wait_for_replacement(app: str, placed: dict[str, str], kill_at: float, limit_s: float) -> float | None:
    """When the application recovered, or None within `limit_s` of the kill.

    Recovered: a replacement replica (one that was not there before) runs, and Serve runs two."""
    while time.monotonic() - kill_at < limit_s:
        time.sleep(0.25)
        if set(replica_nodes(app)) - set(placed) and running_replicas(app) >= 2:
            return time.monotonic()
    return None


def _stop_traffic(traffic: list[Traffic], threads: list[threading.Thread]) -> None:
    for t in traffic:
        t.stop.set()
    for thread in threads:
        thread.join(timeout=35)


def proxy_figures(records: list[tuple[float, float, int]], kill_at: float, recovered_at: float | None) -> dict[str, Any]:
    """What the clients through the proxy saw: failures in flight at the kill, after it, and after recovery."""
    failed = [(s, e, st) for s, e, st in records if st != 200]
    later = [r for r in records if recovered_at is not None and r[0] >= recovered_at]
    return {
        "requests": len(records),
        "requests_before_kill": sum(1 for r in records if r[1] < kill_at),
        "in_flight_at_kill": sum(1 for r in records if r[0] <= kill_at <= r[1]),
        "errors": len(failed),
        "errors_in_flight": sum(1 for r in failed if r[0] <= kill_at <= r[1]),
        "errors_started_after_kill": sum(1 for r in failed if r[0] > kill_at),
        "error_statuses": sorted({st for _, _, st in failed}),
        "last_error_after_kill_s": max((e - kill_at for _, e, _ in failed), default=0.0),
        "recovered": recovered_at is not None,
        "recover_s": (recovered_at - kill_at) if recovered_at is not None else None,
        "requests_after_recovery": len(later),
        "errors_after_recovery": sum(1 for r in later if r[2] != 200),
    }


def direct_figures(direct: list[tuple[str, Traffic]], victim: str, kill_at: float) -> dict[str, Any]:
    """What the clients at each replica's own address saw: the killed replica's after the kill, the other's throughout.
    `direct`: (the node of the replica at that address, its client)."""
    out: dict[str, Any] = {"addresses": len(direct)}
    for node, traffic in direct:
        records = list(traffic.records)
        after = [r for r in records if r[0] > kill_at]
        failed_after = [r for r in after if r[2] != 200]
        role = "victim" if node == victim else "survivor"
        out[role] = {
            "requests": len(records),
            "errors": sum(1 for r in records if r[2] != 200),
            "requests_after_kill": len(after),
            "errors_after_kill": len(failed_after),
            "answered_after_kill": len(after) - len(failed_after),
            "error_statuses": sorted({r[2] for r in records if r[2] != 200}),
            "slowest_failure_s": max((e - s for s, e, _ in failed_after), default=0.0),
        }
    return out


def node_kill_in_child(settings: Settings, work: Path, timeout: float = 240.0) -> dict[str, Any]:
    """`node_kill` in a child process of its own: Ray's state stays out of this one, every node is
    on 127.0.0.1 (set before Ray is imported), and a hung run is killed with its whole cluster."""
    work.mkdir(parents=True, exist_ok=True)
    out = work / "node_kill.json"
    # Token mode with a fresh private token, as the local launcher runs its cluster.
    ray_server.write_ray_token(work / ray_server.RAY_TOKEN)
    env = ray_server.local_cluster_env(work / ray_server.RAY_TOKEN, os.environ)
    command = [sys.executable, "-m", "pipeline.reliability.ray_nodes", str(settings.root), settings.model, str(work)]
    with open(work / "node_kill.log", "wb") as log:
        proc = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            raise PipelineError(
                "reliability", f"the node-kill run did not finish within {timeout:.0f}s", f"see {work / 'node_kill.log'}"
            ) from None
    if proc.returncode != 0 or not out.exists():
        tail = "\n".join((work / "node_kill.log").read_text(errors="replace").splitlines()[-15:])
        raise PipelineError(
            "reliability", f"the node-kill run failed with exit code {proc.returncode}:\n{tail}", f"see {work / 'node_kill.log'}"
        )
    return json.loads(out.read_text())


if __name__ == "__main__":  # the child of node_kill_in_child: root model work
    root, model, folder = sys.argv[1:4]
    figures = node_kill(Settings(model=model, root=Path(root)), Path(folder))
    files.write_json(Path(folder) / "node_kill.json", figures)
