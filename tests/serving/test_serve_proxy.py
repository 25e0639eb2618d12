"""Attacks on the proxy in front of TorchServe (pipeline/serving/torchserve/proxy.py), on a real server."""

from __future__ import annotations

import json
import socket
import time
from pathlib import Path

import pytest

from pipeline.reliability import served_faults as sf
from pipeline.reliability.faults import copy_project
from pipeline.serving.common.client import http
from pipeline.serving.torchserve import proxy
from pipeline.serving.torchserve import server as serve
from tests.helpers import needs_java


@pytest.fixture(scope="module")
def server(built_root, tmp_path_factory):
    project = copy_project(built_root, tmp_path_factory.mktemp("proxy") / "project", "simple_nn")
    info = serve.start(project.settings, auto_ports=True)
    yield info
    serve.stop(project.settings)
    assert info.processes() == []


@pytest.mark.slow
@needs_java
def test_http2_streams_are_refused_and_the_proxy_memory_stays_bounded(server, measure):
    """Cleartext HTTP/2 with prior knowledge: 100 streams a connection, each sending a 1 MB body, gave each
    stream its own buffer (4 connections: 400 MB). The proxy speaks HTTP/1.1 only and answers the preface 400."""
    result = sf.h2_streams(server, connections=6, streams=100, attack_s=4)
    assert result.spoken == 0 and result.refused == 6, result
    assert max(result.proxy_rss_peak, result.proxy_rss_after) - result.proxy_rss_before <= result.memory_bound, result
    assert result.survived
    assert server.predict(b'{"x": 5.0}')[0] == 200
    measure(
        f"HTTP/2 streams: {result.connections} x {result.streams} streams of {result.declared_bytes} bytes; proxy RSS "
        f"{result.proxy_rss_before >> 20} -> peak {result.proxy_rss_peak >> 20} -> after {result.proxy_rss_after >> 20} MiB "
        f"(bound +{result.memory_bound >> 20})"
    )


def _send_head(info, port: int, head: str, body: bytes = b"") -> tuple[bytes, float, str]:
    """What the server answered to `head` (and the first bytes of a body), read until it closed, how long that took,
    and the client's address as the access log writes it."""
    start = time.monotonic()
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        client = "{}:{}".format(*sock.getsockname())
        sock.sendall(head.encode() + body)
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
    return answer, time.monotonic() - start, client


@pytest.mark.slow
@needs_java
@pytest.mark.parametrize(
    "api, key",
    [("inference", None), ("inference", "not-the-key"), ("inference", "management"), ("management", "inference"), ("management", None)],
)
def test_a_request_without_the_api_s_key_is_a_401_at_its_headers_and_never_reaches_torchserve(server, api, key):
    """TorchServe checks the token only once the whole body has arrived; the proxy refuses at the headers and closes."""
    access_log = Path(server.run_dir) / "logs" / "access_log.log"
    logged = access_log.read_text().count("\n")
    token = server.token(key) if key in ("inference", "management") else key
    head = (
        f"POST /predictions/{server.model} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nContent-Length: 1000000\r\n"
        + (f"Authorization: Bearer {token}\r\n" if token else "")
        + "\r\n"
    )
    answer, waited, client = _send_head(server, server.ports[api], head, b'{"x": [1')
    status, _, body = answer.partition(b"\r\n\r\n")
    assert status.startswith(b"HTTP/1.1 401") and waited < 2, (answer[:300], waited)
    error = json.loads(body)
    assert error["code"] == 401 and "Token Authorization failed" in error["message"] and f"<the {api} key>" in error["message"]
    # The proxy logs a request once its connection is done with it, so an earlier test's line may come after `logged`:
    # the client's address picks this connection's lines out.
    deadline = time.monotonic() + 10
    while (
        not (lines := [line for line in access_log.read_text().splitlines()[logged:] if f" {client} " in line])
        and time.monotonic() < deadline
    ):
        time.sleep(0.05)
    assert len(lines) == 1 and f" {api} <NOSRV> 401 " in lines[0], lines  # the proxy answered: TorchServe never saw it


@pytest.mark.slow
@needs_java
def test_the_metrics_api_takes_no_body_and_the_token_api_is_refused(server):
    head = f"POST /metrics HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {server.token()}\r\nContent-Length: 1000000\r\n\r\n"
    answer, waited, _ = _send_head(server, server.ports["metrics"], head, b"1" * 10)
    assert answer.startswith(b"HTTP/1.1 400") and b"takes no request body" in answer and waited < 2, answer[:300]
    status, text = http("GET", server.metrics_url, token=server.token())  # the inference token, as a scraper sends it
    assert status == 200 and b"pipeline_requests_total" in text
    assert http("GET", server.metrics_url)[0] == 401
    assert http("GET", server.metrics_url, token=server.token("management"))[0] == 401
    status, answer = http("POST", f"{server.management}/token?type=inference", token=server.token("management"))
    assert status == 403 and b"restart the server" in answer


@pytest.mark.slow
@needs_java
def test_slow_bodies_without_a_token_leave_the_server_to_clients_with_one(server, measure):
    """Headers and 10 of 1,000 bytes, no token, reopened when closed: the proxy answers 401 at the headers and closes,
    so they hold no slot. Before, 300 of them for 30 s let a client with the token get one answer, after 32.7 s."""
    connections = sf.proxy_limits(server).connections + 50  # more than the proxy's slots: 170
    result = sf.slow_unauthenticated(server, b'{"x": 5.0}', connections=connections, attack_s=8)
    assert result.refused_401 > result.connections, result  # answered and reopened, not held
    assert result.requests >= 10 and result.answered_share >= 0.9, result
    assert result.survived
    measure(
        f"slow bodies without a token: {result.connections} connections x {result.sent_bytes} of {result.declared_bytes} bytes "
        f"for {result.attack_s:.0f}s ({result.reconnects} closed and reopened, {result.refused_401} after a 401); with the token "
        f"{result.answered}/{result.requests} answered within {result.latency_limit_s:.0f}s, p50 {result.latency_p50_s}, "
        f"max {result.latency_max_s}"
    )


MIB = 1 << 20


@pytest.mark.parametrize("cap_mib", [1, 4, 24, 48, 67, 72, 96, 200])
def test_torchserve_holds_the_bodies_its_memory_allows_one_at_least(cap_mib):
    """Four 67 MiB bodies (the old floor) at a 72 MiB cap exhausted the JVM's 256 MiB of direct memory."""
    limits = proxy.Limits(cap_mib * MIB, 30)
    assert limits.upstream >= 1
    assert limits.upstream == 1 or limits.upstream * limits.body_bytes <= proxy.UPSTREAM_MEMORY
    # One body or all of them: within 3/8 of the frontend's memory, raised for a cap over UPSTREAM_MEMORY.
    assert limits.upstream * limits.body_bytes * proxy.JVM_MEMORY <= limits.jvm_memory * proxy.UPSTREAM_MEMORY
    props = {"max_request_size": str(limits.body_bytes), "default_response_timeout": "30", "vmargs": "-Xmx256m -Dx=1"}
    serve.fit_jvm_memory(props)
    assert props["vmargs"] == f"-Xmx{limits.jvm_memory // MIB}m -Dx=1"
    assert (limits.jvm_memory > proxy.JVM_MEMORY) == (cap_mib > 96)


def test_a_72_mib_cap_hands_torchserve_one_request_at_a_time(tmp_path):
    routes = [proxy.Route("inference", 1, Path("inference.sock"), "k")]
    assert "server torchserve unix@inference.sock maxconn 1\n" in proxy.config(routes, proxy.Limits(72 * MIB, 30), tmp_path, "m")


def test_a_generation_model_streams_through_and_its_queue_is_capped(tmp_path):
    """The proxy's part in serving a decoder: pieces sent as they come, the OpenAI routes, and max_streams
    generating with max_queued waiting (tests/generation/test_served.py sees the 503 on a real server)."""
    routes = [proxy.Route("inference", 1, Path("inference.sock"), "k"), proxy.Route("management", 2, Path("management.sock"), "m")]
    text = proxy.config(routes, proxy.Limits(MIB, 30, streams=4, queued=9, generation_timeout_s=300), tmp_path, "llama")
    assert "    option http-no-delay\n" in text
    # A non-streamed answer sends nothing until it ends: the proxy waits the requests' own limit for it.
    assert "    timeout server 310s\n" in text and "    timeout client 310s\n" in text
    assert "server torchserve unix@inference.sock maxconn 4\n" in text and "server torchserve unix@management.sock maxconn 64\n" in text
    assert f"file {tmp_path / 'queue-full.json'} hdr Retry-After 1 if {{ queue(inference) ge 9 }}" in text
    assert "set-path /predictions/llama if { method POST } { path /v1/completions /v1/chat/completions }" in text
    assert text.count("queue(") == 1  # the management API is not capped
    plain = proxy.config(routes, proxy.Limits(MIB, 30), tmp_path, "m")
    assert "queue(" not in plain and "maxconn 64\n" in plain and "    timeout server 40s\n" in plain
    assert b"retry-after: 1\r\n" in proxy.error_page(503, "busy") and b"retry-after" not in proxy.error_page(502, "bad")
