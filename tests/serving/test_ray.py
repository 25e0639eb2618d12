"""The archive on Ray Serve: a real local Ray cluster, the real archive, real HTTP, a client nobody here wrote."""

from __future__ import annotations

import json
import os
import secrets
import shutil
import socket
import stat
import time
from concurrent.futures import ThreadPoolExecutor
from http.client import HTTPResponse
from pathlib import Path

import numpy as np
import psutil
import pytest

from pipeline.reliability.served_faults import LOOPBACK
from pipeline.serving.common.client import http
from pipeline.serving.common.processes import wait_ended
from pipeline.serving.ray import app as ray_app
from pipeline.serving.ray import server as ray_server
from pipeline.settings import Settings
from tests.helpers import copy_root
from tests.serving.cases import BAD_INPUTS

pytestmark = pytest.mark.slow
ray = pytest.importorskip("ray", reason="the ray extra is not installed (make test installs it)")
httpclient = pytest.importorskip("tritonclient.http", reason="tritonclient is a dev dependency (make setup)")


BODY_TIMEOUT_S = 3.0  # the application's body_timeout_s here, short for the test that waits it out


@pytest.fixture(scope="module")
def home(tmp_path_factory):
    """The launcher's HOME: Ray must write nothing to ~/.ray (it wrote a 0644 auth_token there)."""
    return tmp_path_factory.mktemp("home")


@pytest.fixture(scope="module")
def app_settings(built_root, tmp_path_factory) -> Settings:
    """This module's copy of the built project: the application below runs in it."""
    root = tmp_path_factory.mktemp("ray") / "project"
    copy_root(built_root, root)
    return Settings(root=root)


# How long `app` took to answer its first request; test_answers_as_torchserve_does reports it.
STARTED_S: list[float] = []


@pytest.fixture(scope="module")
def app(app_settings, home):
    """`serve --on ray` on a fresh local cluster: it returns only once a real request was answered;
    stop leaves nothing, and a second stop finds nothing to stop."""
    with pytest.MonkeyPatch.context() as env:
        env.setenv("HOME", str(home))
        env.setenv("RAY_AUTH_MODE", "disabled")  # the launcher turns token mode on whatever this says
        env.setenv("RAY_AUTH_TOKEN", secrets.token_hex(32))  # and drops this: Ray would read it before its own token file
        started = time.perf_counter()
        info = ray_server.start(app_settings, auto_ports=True, timeout=120, body_timeout_s=BODY_TIMEOUT_S)
    STARTED_S.append(time.perf_counter() - started)
    yield info
    # Each replica unpacked the archive into a folder of its own: inside the cluster's, which stop removes.
    unpacked = list(Path(info.temp_dir or "/nonexistent").glob("tmp/pipeline-ray-*/model.onnx"))
    assert unpacked, "the replica's folder is not inside the cluster's temporary folder"
    assert ray_server.stop(app_settings)
    assert info.processes() == [], "Ray processes left behind"
    # The launcher ended its cluster itself: Ray's own SIGTERM handler (a stack trace, then the process gone) did not run.
    assert "SIGTERM received" not in (Path(info.run_dir) / "logs" / "launcher.log").read_text(errors="replace")
    assert not any(path.exists() for path in unpacked), "a replica's unpacked model left behind"
    assert not info.key_file.exists()
    assert not ray_server.stop(app_settings)  # nothing left to stop


def post(info, obj=None, raw: bytes | None = None, **kw):
    status, answer = info.predict(raw if raw is not None else json.dumps(obj).encode(), **kw)
    return status, json.loads(answer) if answer else None


def test_answers_as_torchserve_does(app, measure):
    measure(f"Ray Serve: 1 replica on a fresh local cluster answered in {STARTED_S[0]:.1f} s")
    assert post(app, {"x": 5.0}) == (200, {"y": pytest.approx(11.0, abs=0.05)})
    status, answer = post(app, {"x": [1.0, 2.0, 3.0]})
    assert status == 200 and answer["y"] == pytest.approx([3.0, 5.0, 7.0], abs=0.05)


@pytest.mark.parametrize("body, message", [(b, m) for _, b, m in BAD_INPUTS], ids=[n for n, _, _ in BAD_INPUTS])
def test_bad_input_is_a_400_with_the_same_message(app, body, message):
    status, answer = post(app, raw=body)
    assert status == 400, answer
    assert answer["code"] == 400 and message in answer["error"]
    assert post(app, {"x": 1.0})[0] == 200


def test_form_encoded_body_gets_the_same_hint(app):
    status, answer = post(app, raw=b'{"x": 5.0}', content_type="application/x-www-form-urlencoded")
    assert status == 400 and "Content-Type: application/json" in answer["error"]


def test_oversized_body_is_a_413(app):
    status, answer = post(app, raw=json.dumps({"x": [1.0] * 300_000}).encode())
    assert status == 413 and "bytes" in answer["error"]
    assert post(app, {"x": 1.0})[0] == 200


@pytest.mark.parametrize(
    "method, path",
    [("POST", "/predictions/simple_nn"), ("GET", "/v2/models/simple_nn"), ("POST", "/v2/models/simple_nn/infer"), ("GET", "/v2")],
)
@pytest.mark.parametrize("token", [None, "wrong-token-of-some-length"])
def test_every_inference_and_metadata_route_needs_the_token(app, method, path, token):
    status, answer = http(method, app.inference + path, b'{"x": 1.0}' if method == "POST" else None, token)
    assert status == 401 and "bearer token" in json.loads(answer)["error"]


def test_the_replica_serves_at_its_own_address_and_the_proxy_serves_the_same(app):
    """Direct ingress: the recorded address is the replica's own server; Serve's proxy answers the same, with the same token."""
    assert app.replica_urls == (app.inference,) and app.proxy and app.proxy != app.inference
    body = json.dumps({"x": [1.0, 2.0]}).encode()
    direct = http("POST", app.predictions_url, body, app.token())
    via_proxy = http("POST", f"{app.proxy}/predictions/{app.model}", body, app.token())
    assert direct[0] == via_proxy[0] == 200 and json.loads(direct[1]) == json.loads(via_proxy[1])
    status, answer = http("POST", f"{app.proxy}/predictions/{app.model}", body, None)
    assert status == 401 and "bearer token" in json.loads(answer)["error"]


def test_only_health_is_open_and_only_the_token_holder_is_told_the_routes(app):
    assert http("GET", app.inference + "/v2/health/live")[0] == 200
    assert http("GET", app.inference + "/v2/health/ready")[0] == 200
    for method, path in [("GET", "/v2/models/other"), ("POST", "/nothing"), ("GET", "/"), ("PUT", "/predictions/simple_nn")]:
        status, answer = http(method, app.inference + path, b"{}" if method != "GET" else None)
        assert status == 401 and b"/v2/models/simple_nn" not in answer, (path, answer)  # the token first, routes after
    status, answer = http("GET", app.inference + "/v2/models/other", token=app.token())
    assert status == 404 and "/v2/models/simple_nn" in json.loads(answer)["error"]
    # Ray's proxy answers /-/routes itself, before any application: it can only be narrowed to
    # the one route prefix, "/", and the application's name; the routes inside stay unlisted.
    status, answer = http("GET", app.inference + "/-/routes")
    assert status == 200 and json.loads(answer) == {"/": app.model}


def test_key_file_is_private(app):
    assert stat.S_IMODE(os.stat(app.key_file).st_mode) == 0o600


def test_the_cluster_runs_in_token_mode_with_its_own_private_token(app, home):
    token = Path(app.run_dir) / ray_server.RAY_TOKEN
    assert stat.S_IMODE(token.stat().st_mode) == 0o600
    # The servers that check Ray's token, and a replica. (Ray's agents retitle themselves with
    # setproctitle, which writes over the environment the kernel shows for them.)
    kinds = {"pipeline.serving.ray.server": "launcher", "gcs_server": "GCS", "raylet/raylet": "raylet", "ray::ServeReplica": "replica"}
    seen = {}
    for proc in app.processes():
        line = " ".join(proc.cmdline())
        for mark, kind in kinds.items():
            if mark in line:
                seen[kind] = proc.environ()
    assert sorted(seen) == sorted(kinds.values())
    for kind, env in seen.items():
        assert (env["RAY_AUTH_MODE"], env["RAY_AUTH_TOKEN_PATH"], env.get("RAY_AUTH_TOKEN")) == ("token", str(token), None), kind
    assert not (home / ".ray").exists()


def test_rays_sockets_lie_behind_a_folder_only_we_can_enter(app):
    """Ray makes its temp, session, sockets/ and logs/ folders 0777; the folder they lie in is 0700."""
    private = Path(app.temp_dir)
    info = private.stat()
    assert stat.S_IMODE(info.st_mode) == 0o700 and info.st_uid == os.getuid()
    sockets = (private / "ray" / "session_latest" / "sockets").resolve()
    assert any(p.name.startswith("raylet") for p in sockets.iterdir())
    closed = next(p for p in sockets.parents if not stat.S_IMODE(p.stat().st_mode) & 0o011)  # no one else may pass it
    assert closed == private and closed.stat().st_uid == os.getuid()


def test_concurrent_clients_get_their_own_answers(app):
    xs = [round(-10 + i * 0.1, 3) for i in range(200)]
    with ThreadPoolExecutor(16) as pool:
        results = list(pool.map(lambda x: post(app, {"x": x}), xs))
    assert all(status == 200 for status, _ in results)
    status, together = post(app, {"x": xs})  # the same rows in one request: the answers each client must get
    assert status == 200
    assert [a["y"] for _, a in results] == pytest.approx(together["y"], abs=1e-5)


def test_every_ray_port_is_on_loopback_but_the_replicas_internal_grpc(app):
    """Ray's servers bind the node address, 127.0.0.1 here. Ray Serve 2.60's replica binds its
    inter-deployment gRPC server to [::]:0 in code (replica.py, `_on_initialized`), with no
    setting: that one listener is named in the README, nothing else may listen outside
    loopback, and that one refuses a call without Ray's token (token mode's interceptor)."""
    import grpc

    outside = []
    for proc in app.processes():
        try:
            for c in proc.net_connections(kind="inet"):
                if c.status == psutil.CONN_LISTEN and c.laddr.ip not in LOOPBACK:
                    outside.append((" ".join(proc.cmdline())[:60], c.laddr.ip, c.laddr.port))
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    assert all(cmd.startswith("ray::ServeReplica") for cmd, _, _ in outside), outside
    assert len(outside) <= 1, outside
    for _, _, port in outside:
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel, pytest.raises(grpc.RpcError) as refused:
            channel.unary_unary("/ray.serve.ASGIService/HandleRequest")(b"", timeout=10)
        assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED


def _stalled_request(info, token: str) -> socket.socket:
    """A request that declares a 1000-byte body and sends none of it."""
    port = int(info.inference.rsplit(":", 1)[1])
    conn = socket.create_connection(("127.0.0.1", port), timeout=30)
    head = (
        f"POST /predictions/{info.model} HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {token}\r\n"
        "Content-Type: application/json\r\nContent-Length: 1000\r\n\r\n"
    )
    conn.sendall(head.encode())
    return conn


def test_bodies_that_never_come_free_their_slots(app, measure):
    """More stalled bodies than a replica has slots: each is a 408 after body_idle_s (2 s: it was body_timeout_s, 10 s
    by default, and a real request waited 8 s), and a real request is answered meanwhile."""
    stalled = [_stalled_request(app, app.token()) for _ in range(ray_app.DEFAULT_MAX_ONGOING + 6)]
    try:
        started = time.monotonic()
        assert post(app, {"x": 1.0}, timeout=30)[0] == 200
        waited = time.monotonic() - started
        answers = []
        for conn in stalled:
            response = HTTPResponse(conn)
            response.begin()
            answers.append((response.status, response.read()))
    finally:
        for conn in stalled:
            conn.close()
    measure(f"Ray Serve: a request behind {len(stalled)} stalled bodies answered in {waited:.1f} s")
    assert waited < 3 * ray_app.RayAppOptions.body_idle_s + 5
    assert all(status == 408 and b"no part of the request body arrived for 2 s" in body for status, body in answers), answers[:2]


# --- the Open Inference Protocol, through tritonclient ------------------------------------


@pytest.fixture(scope="module")
def triton(app):
    client = httpclient.InferenceServerClient(app.inference.removeprefix("http://"))
    # A function, not a dict: tritonclient adds its own headers to the dict it is given.
    yield client, lambda: {"Authorization": f"Bearer {app.token()}"}
    client.close()


def test_oip_health_and_metadata(triton):
    client, auth = triton
    assert client.is_server_live() and client.is_server_ready()
    assert client.is_model_ready("simple_nn", headers=auth())
    meta = client.get_model_metadata("simple_nn", headers=auth())
    assert meta["inputs"] == [{"name": "x", "datatype": "FP32", "shape": [-1, 1]}]
    assert meta["outputs"] == [{"name": "y", "datatype": "FP32", "shape": [-1, 1]}]


@pytest.mark.parametrize("binary", [True, False], ids=["binary tensors", "JSON tensors"])
def test_oip_infer_two_rows(triton, binary):
    client, auth = triton
    x = httpclient.InferInput("x", [2, 1], "FP32")
    x.set_data_from_numpy(np.array([[1.0], [2.0]], dtype=np.float32), binary_data=binary)
    result = client.infer(
        "simple_nn", [x], headers=auth(), outputs=[httpclient.InferRequestedOutput("y", binary_data=binary)], request_id="r1"
    )
    y = result.as_numpy("y")
    assert y.shape == (2, 1) and y.dtype == np.float32
    np.testing.assert_allclose(y[:, 0], [3.0, 5.0], atol=0.05)
    assert result.get_response()["id"] == "r1"


@pytest.mark.parametrize(
    "shape, dtype, data, message",
    [
        ([2, 2], "FP32", np.ones((2, 2), np.float32), "input 'x' is 2 long on axis 1; this model's 'x' takes 1 there"),
        ([1, 1], "FP64", np.ones((1, 1), np.float64), "input 'x' is FP32"),
        ([1, 1], "FP32", np.array([[np.nan]], np.float32), "finite"),
    ],
    ids=["wrong shape", "wrong datatype", "NaN"],
)
def test_oip_bad_request_is_a_400(triton, shape, dtype, data, message):
    client, auth = triton
    x = httpclient.InferInput("x", shape, dtype)
    x.set_data_from_numpy(data)
    with pytest.raises(Exception) as raised:
        client.infer("simple_nn", [x], headers=auth())
    assert "[400]" in str(raised.value) and message in str(raised.value)


@pytest.mark.parametrize(
    "head, message",
    [
        ({"inputs": [{"name": "x", "shape": [1] * 3000, "datatype": "FP32", "data": [1.0]}]}, "has 3000 axes"),
        ({"id": float("nan"), "inputs": [{"name": "x", "shape": [1, 1], "datatype": "FP32", "data": [1.0]}]}, "NaN is not a number"),
        ({"parameters": {"p": float("-inf")}, "inputs": [{"name": "x", "shape": [1], "datatype": "FP32", "data": [1.0]}]}, "-Infinity"),
        # Fewer axes and no data: refused from the shape, in a thread, not nested on the replica's event loop.
        ({"inputs": [{"name": "x", "shape": [20_000_000], "datatype": "FP32", "data": []}]}, "has 1 axes; this model's 'x' has 2"),
    ],
    ids=["3000 axes", "NaN id", "-Infinity parameter", "fewer axes, no data"],
)
def test_oip_odd_json_is_a_400_not_a_500(app, head, message):
    status, answer = http("POST", f"{app.inference}/v2/models/simple_nn/infer", json.dumps(head).encode(), app.token())
    assert status == 400 and message in json.loads(answer)["error"], answer


# --- start, stop, time to answer ----------------------------------------------------------


def test_a_second_start_in_the_same_folder_is_refused(app, app_settings):
    # Two replicas on the local launcher are started by the benchmark's and tune's Ray tests (ray-2, r2).
    with pytest.raises(Exception, match="already served on Ray"):
        ray_server.start(app_settings, auto_ports=True)
    assert post(app, {"x": 1.0})[0] == 200  # the running application is untouched


def test_deploy_onto_a_running_cluster_by_address(built_root, tmp_path):
    """`serve --on ray --address` deploys onto a cluster someone else started; `stop` deletes only the application."""
    import subprocess
    import sys
    import tempfile

    from pipeline.serving.common.client import free_port

    root = tmp_path / "project"
    copy_root(built_root, root)
    # Ray's control plane with its token, as on a real cluster; the token in the environment of both sides.
    env = {**os.environ, **ray_server.LOOPBACK_ENV, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": secrets.token_hex(32)}
    env.pop("RAY_ADDRESS", None)
    temp_dir = tempfile.mkdtemp(prefix="pipeline-ray-")
    port = free_port()
    ray_cli = os.path.join(os.path.dirname(sys.executable), "ray")

    def cluster() -> list[psutil.Process]:  # every process of that cluster names its temp folder
        return [p for p in psutil.process_iter(["cmdline"]) if temp_dir + "/" in " ".join(p.info["cmdline"] or ())]

    head = [
        ray_cli,
        "start",
        "--head",
        f"--port={port}",
        "--num-cpus=2",
        "--include-dashboard=false",
        f"--temp-dir={temp_dir}",
        "--disable-usage-stats",
    ]
    try:
        subprocess.run(head, env=env, check=True, capture_output=True, timeout=120)
        pipeline = [sys.executable, "-m", "pipeline"]
        serve = [*pipeline, "serve", "--on", "ray", "--address", f"127.0.0.1:{port}", "--ports", "auto", "--root", str(root)]
        served = subprocess.run(serve, env=env, capture_output=True, text=True, timeout=180)
        assert served.returncode == 0, served.stderr[-2000:]
        assert f"the cluster at 127.0.0.1:{port}" in served.stdout
        info = ray_server.load_info(ray_server.resolve(Settings(root=root))[1])
        assert info is not None and info.address == f"127.0.0.1:{port}" and info.pid is None
        assert post(info, {"x": 1.0})[0] == 200
        stopped = subprocess.run(
            [*pipeline, "stop", "--on", "ray", "--root", str(root)], env=env, capture_output=True, text=True, timeout=120
        )
        assert stopped.returncode == 0 and "stopped" in stopped.stdout, stopped.stderr[-2000:]
        assert http("GET", f"{info.inference}/v2/health/live", timeout=5)[0] == 404  # Serve runs on, without the application
        assert cluster(), "the cluster itself is left running: it is not ours"
        wrong = {**env, "RAY_AUTH_TOKEN": secrets.token_hex(32)}
        refused = subprocess.run(serve, env=wrong, capture_output=True, text=True, timeout=180)
        assert refused.returncode == 1 and "refused this RAY_AUTH_TOKEN: it is not the cluster's token" in refused.stderr, refused.stderr[
            -2000:
        ]
    finally:
        procs = cluster()
        for proc in procs:
            proc.kill()
        wait_ended(procs, 10)
        shutil.rmtree(temp_dir, ignore_errors=True)
