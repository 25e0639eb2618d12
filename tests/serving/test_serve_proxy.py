"""Attacks on the proxy in front of TorchServe (pipeline/serving/torchserve/proxy.py), on a real server."""

from __future__ import annotations

import pytest

from pipeline.reliability import served_faults as sf
from pipeline.reliability.faults import copy_project
from pipeline.serving.torchserve import server as serve
from tests.helpers import MEASUREMENTS, needs_java


@pytest.fixture(scope="module")
def server(built_root, tmp_path_factory):
    project = copy_project(built_root, tmp_path_factory.mktemp("proxy") / "project", "simple_nn")
    info = serve.start(project.settings, auto_ports=True)
    yield info
    serve.stop(project.settings)
    assert info.processes() == []


@pytest.mark.slow
@needs_java
def test_http2_streams_are_refused_and_the_proxy_memory_stays_bounded(server):
    """Cleartext HTTP/2 with prior knowledge: 100 streams a connection, each sending a 1 MB body, gave each
    stream its own buffer (4 connections: 400 MB). The proxy speaks HTTP/1.1 only and answers the preface 400."""
    result = sf.h2_streams(server, connections=6, streams=100, attack_s=4)
    assert result.spoken == 0 and result.refused == 6, result
    assert max(result.proxy_rss_peak, result.proxy_rss_after) - result.proxy_rss_before <= result.memory_bound, result
    assert result.survived
    assert server.predict(b'{"x": 5.0}')[0] == 200
    MEASUREMENTS.append(
        f"HTTP/2 streams: {result.connections} x {result.streams} streams of {result.declared_bytes} bytes; proxy RSS "
        f"{result.proxy_rss_before >> 20} -> peak {result.proxy_rss_peak >> 20} -> after {result.proxy_rss_after >> 20} MiB "
        f"(bound +{result.memory_bound >> 20})"
    )
