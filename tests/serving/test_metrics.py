"""The servers' metrics (pipeline.serving.common.metrics): gathered from every process, documented in one table, and
the Grafana dashboard names only what exists."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys

from pipeline.serving.common import metrics
from tests.helpers import REPO

# One process of a server: it answers two requests (one a 400), holds one in flight, and exits or stays.
RECORD = """
import sys
from pipeline.serving.common.metrics import Recorder, exposition
r = Recorder("m", sys.argv[1])
r.batch.observe(2)
r.answered(200, 0.004)
r.answered(400, 0.001)
r.tokens.inc(5)
r.first_token.observe(0.02)
r.in_flight.inc(1)
"""
WORKER = (
    RECORD
    + """
print("ready", flush=True)
if sys.argv[2] == "stay":
    sys.stdin.read()
"""
)


def test_the_folder_holds_every_process_and_a_dead_ones_requests_leave_the_in_flight_gauge(tmp_path):
    env = {**os.environ, **metrics.prepare(tmp_path / "metrics")}
    dead = subprocess.run([sys.executable, "-c", WORKER, "v1", "exit"], env=env, capture_output=True, text=True, check=True)
    assert dead.stdout.strip() == "ready"
    alive = subprocess.Popen(
        [sys.executable, "-c", WORKER, "v1", "stay"], env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    try:
        assert alive.stdout is not None and alive.stdout.readline().strip() == "ready"
        figures = metrics.samples(metrics.exposition(tmp_path / "metrics"))
        labels = frozenset({("model", "m"), ("version", "v1")})
        assert figures[("pipeline_requests_total", labels | {("code", "200")})] == 2  # both processes' counts
        assert figures[("pipeline_requests_total", labels | {("code", "400")})] == 2
        assert figures[("pipeline_request_duration_seconds_count", labels)] == 4
        assert figures[("pipeline_request_duration_seconds_bucket", labels | {("le", "0.005")})] == 4
        assert figures[("pipeline_request_duration_seconds_bucket", labels | {("le", "0.001")})] == 2
        assert figures[("pipeline_batch_size_sum", labels)] == 4
        assert figures[("pipeline_generated_tokens_total", labels)] == 10
        assert figures[("pipeline_time_to_first_token_seconds_count", labels)] == 2
        assert metrics.in_flight(tmp_path / "metrics", "m", "v1") == 1  # the live process's only
    finally:
        alive.communicate("")
    assert metrics.in_flight(tmp_path / "metrics", "m", "v1") == 0
    # A new server starts from zero.
    metrics.prepare(tmp_path / "metrics")
    assert metrics.samples(metrics.exposition(tmp_path / "metrics")) == {}


def exposed_names() -> set[str]:
    """Every sample name the metrics expose, from a process that recorded each of them (its own registry)."""
    code = RECORD + "sys.stdout.buffer.write(exposition())\n"
    text = subprocess.run([sys.executable, "-c", code, "v"], capture_output=True, check=True).stdout
    return {name for name, _ in metrics.samples(text) if name.startswith("pipeline_")}


def family(sample: str) -> str:
    return re.sub(r"_(bucket|sum|count)$", "", sample)


def test_the_docs_table_and_the_dashboard_name_exactly_what_is_exposed():
    names = exposed_names()
    assert {family(n) for n in names} == set(metrics.NAMES)  # METRICS is what a scraper gets
    page = (REPO / "docs" / "operating.md").read_text()
    rows = re.findall(r"^\| `(pipeline_\w+)` \| (\w+) \| ([\w, ]+) \| (.+) \|$", page, re.M)
    assert [(name, kind, tuple(labels.split(", ")), what) for name, kind, labels, what in rows] == [
        (m.name, m.kind, m.labels, m.help) for m in metrics.METRICS
    ]
    dashboard = json.loads((REPO / "docs" / "grafana" / "pipeline.json").read_text())
    queries = [t["expr"] for panel in dashboard["panels"] for t in panel["targets"]]
    queries.append(dashboard["templating"]["list"][1]["query"])
    named = {n for q in queries for n in re.findall(r"\bpipeline_\w+", q)}
    assert named and named <= names, named - names
    assert {family(n) for n in named} == set(metrics.NAMES)  # every metric has a panel
