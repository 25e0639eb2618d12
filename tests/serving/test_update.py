"""A new version of a served model under load, on a real TorchServe and a real Ray Serve: the commands a user runs
(serve, update, rollback, stop), six clients on real HTTP the whole time, then the server's own metrics scraped."""

from __future__ import annotations

import itertools
import json
import os
import shutil
import subprocess
import sys
import threading
import time
import uuid
from dataclasses import dataclass, field
from http.client import HTTPConnection
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from pipeline.artifacts.manifest import Manifest
from pipeline.serving.common import metrics
from pipeline.serving.common.client import http
from pipeline.serving.ray import server as ray_server
from pipeline.serving.torchserve import server as ts_server
from pipeline.settings import Layout
from tests.background import keep, kept
from tests.helpers import REPO, copy_root, needs_java

pytestmark = pytest.mark.slow
CLIENTS = 6
# Each client's pause between its answer and its next request. Requests stay in flight through every switch (about 70
# answers a second here), and the commands under test keep a share of the two cores: unpaced, the clients took them
# all, and one Ray update took up to 30 s.
PAUSE_S = 0.05


@dataclass
class Answer:
    started: float
    ended: float
    status: int
    version: str | None
    y: float | None
    request_id: str


@dataclass
class Clients:
    """CLIENTS threads, each posting {"x": 5.0} on a keep-alive connection of its own, PAUSE_S apart, until stopped."""

    url: str
    token: str
    answers: list[list[Answer]] = field(default_factory=lambda: [[] for _ in range(CLIENTS)])
    stop: threading.Event = field(default_factory=threading.Event)

    def run(self, i: int) -> None:
        parts = urlsplit(self.url)
        connection = HTTPConnection(parts.hostname, parts.port, timeout=60)
        while not self.stop.is_set():
            rid = f"client{i}-{uuid.uuid4().hex[:8]}"
            headers = {"Authorization": f"Bearer {self.token}", "Content-Type": "application/json", "X-Request-Id": rid}
            started = time.monotonic()
            try:
                connection.request("POST", parts.path, b'{"x": 5.0}', headers)
                response = connection.getresponse()
                body = response.read()
                y = json.loads(body)["y"] if response.status == 200 else None
                answer = Answer(started, time.monotonic(), response.status, response.getheader("X-Model-Version"), y, rid)
                assert response.getheader("X-Request-Id") == rid, (response.getheader("X-Request-Id"), rid)
            except OSError as exc:
                connection.close()
                connection = HTTPConnection(parts.hostname, parts.port, timeout=60)
                answer = Answer(started, time.monotonic(), -1, None, None, f"{rid}: {exc}")
            self.answers[i].append(answer)
            self.stop.wait(PAUSE_S)
        connection.close()

    def __enter__(self) -> Clients:
        self.threads = [threading.Thread(target=self.run, args=(i,), daemon=True) for i in range(CLIENTS)]
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop.set()
        for t in self.threads:
            t.join(timeout=90)

    @property
    def all(self) -> list[Answer]:
        return [a for answers in self.answers for a in answers]


def pipeline(*args: str, env: dict[str, str], check: bool = True) -> subprocess.CompletedProcess:
    done = subprocess.run([sys.executable, "-m", "pipeline", *args], cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    if check:
        assert done.returncode == 0, done.stdout + done.stderr
    return done


def served_version(root: Path) -> str:
    return Manifest(root, "simple_nn").records["mar"].details["version"]


def build_retrained(folder: Path) -> None:
    """Version 2 in folder/p: the same model trained with another seed, by `pipeline all` as a user runs it, from
    nothing: the session's retrained (tests/background.py)."""
    keep(
        folder,
        pipeline("all", "--root", str(folder / "p"), "--seed", "1", "--no-pt2", env={**os.environ, "HOME": str(folder)}, check=False),
    )


@pytest.fixture(scope="module")
def retrained(builds) -> Path:
    """Version 2's project, once for both servers. Do not modify it."""
    folder = builds.folder("retrained")
    done = kept(folder)
    assert done.returncode == 0, done.stdout + done.stderr
    return folder / "p"


@pytest.mark.parametrize("on", [pytest.param("torchserve", marks=needs_java), "ray"])
def test_update_and_rollback_under_load_fail_no_request(on, built_root, retrained, tmp_path):
    if on == "ray":
        pytest.importorskip("ray", reason="the ray extra is not installed (make test installs it)")
    root = copy_root(built_root, tmp_path / "p")
    env = {**os.environ, "HOME": str(tmp_path)}  # Ray writes nothing to the real home
    backend = ["--root", str(root)] + (["--on", "ray"] if on == "ray" else [])
    pipeline("serve", "--ports", "auto", *backend, env=env)
    layout = Layout(root.resolve(), "simple_nn")
    info = (ray_server if on == "ray" else ts_server).load_info(layout)
    assert info is not None
    try:
        v1 = served_version(root)
        for built in ("artifacts", "model_store", "reports"):  # the served project rebuilt as version 2
            shutil.rmtree(root / built)
        copy_root(retrained, root)
        v2 = served_version(root)
        assert v2 != v1
        # Serve's proxy on Ray: a replica's own address (direct ingress) moves with the replica.
        url = f"{info.proxy if on == 'ray' else info.inference}/predictions/simple_nn"
        with Clients(url, info.token()) as load:
            time.sleep(1)
            update_started = time.monotonic()
            pipeline("update", *backend, env=env)
            update_done = time.monotonic()
            time.sleep(1)
            # A tampered archive is refused, and version 2 goes on answering.
            mar = layout.mar.read_bytes()
            layout.mar.write_bytes(mar[:-100] + bytes(b ^ 0xFF for b in mar[-100:]))
            refused = pipeline("update", *backend, env=env, check=False)
            layout.mar.write_bytes(mar)
            time.sleep(1)
            rollback_started = time.monotonic()
            pipeline("rollback", *backend, env=env)
            rollback_done = time.monotonic()
            time.sleep(1)
        assert refused.returncode != 0 and "model_store/simple_nn.mar" in refused.stderr and "changed" in refused.stderr, refused.stderr
        answers = load.all
        failed = [a for a in answers if a.status != 200]
        assert not failed and len(answers) > 100, (len(answers), failed[:5])
        # Each version answers with its own model (its own y), and every answer names its version.
        by_version = {a.version: set() for a in answers}
        for a in answers:
            by_version[a.version].add(round(a.y, 5))
        assert set(by_version) == {v1, v2} and all(len(ys) == 1 for ys in by_version.values()), by_version
        assert by_version[v1] != by_version[v2]
        # Before the update: version 1; between it and the rollback: version 2 and nothing else; after: version 1.
        assert all(a.version == v1 for a in answers if a.ended < update_started)
        assert all(a.version == v2 for a in answers if update_done < a.started and a.ended < rollback_started)
        assert all(a.version == v1 for a in answers if a.started > rollback_done)
        if on == "torchserve":  # the switch is one default flip: each client's answers change version once each way
            for client in load.answers:
                changes = [b.version for a, b in itertools.pairwise(client) if a.version != b.version]
                assert changes in ([v2, v1], [v2], []), changes
        # The server's metrics count every request the clients sent (and the update's own checks), with a latency histogram.
        status, text = http("GET", info.metrics_url, token=info.token())
        assert status == 200, text
        figures = metrics.samples(text)

        def total(name: str) -> float:
            return sum(v for (n, labels), v in figures.items() if n == name and ("model", "simple_nn") in labels)

        checks = 2 if on == "torchserve" else 1  # TorchServe: each new version's sample request; Ray: serve's first answer
        assert total("pipeline_requests_total") == len(answers) + checks, (total("pipeline_requests_total"), len(answers))
        assert total("pipeline_request_duration_seconds_count") == len(answers) + checks
        assert {dict(labels)["version"] for (n, labels) in figures if n == "pipeline_requests_total"} == {v1, v2}
        # The request ids are in the access log's lines (TorchServe's proxy); a token is needed for the metrics.
        if on == "torchserve":
            log = (Path(info.run_dir) / "logs" / "access_log.log").read_text()
            assert all(f"request_id={a.request_id} version={a.version}" in log for a in answers[:50])
            status, _ = http("POST", f"{info.management}/models?url=x.mar", token=info.token("management"))
            assert status == 403  # no one registers a version through the management port
        assert http("GET", info.metrics_url)[0] == 401
    finally:
        pipeline("stop", *backend, env=env, check=False)
    assert not info.processes()
