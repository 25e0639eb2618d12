"""A multi-node Ray cluster on this machine: a worker node killed under load."""

from __future__ import annotations

from pathlib import Path

import pytest

from pipeline.reliability import suite as reliability
from pipeline.reliability.ray_nodes import node_kill_in_child
from pipeline.settings import Settings
from tests.helpers import copy_root

pytestmark = pytest.mark.slow
pytest.importorskip("ray", reason="the ray extra is not installed (make test installs it)")


def test_a_killed_worker_node_costs_only_the_requests_in_flight(built_root, tmp_path, measure):
    root = tmp_path / "project"
    copy_root(built_root, root)
    k = node_kill_in_child(Settings(root=root), tmp_path / "work")
    measure(
        f"Ray node kill: {k['errors']} errors ({k['errors_in_flight']} in flight) of {k['requests']}, "
        f"recovered in {k['recover_s']}s (the first deploy took {k['deploy_s']:.1f}s), "
        f"then {k['requests_after_recovery']} requests with {k['errors_after_recovery']} errors"
    )
    assert k["replicas_on_both_workers"], k["placement"]
    assert k["requests_before_kill"] > 0 and k["in_flight_at_kill"] > 0  # the load was on at the kill
    assert k["errors_started_after_kill"] == 0 and k["errors"] == k["errors_in_flight"], k["failures"]
    # How soon is a measurement (above); the bound is node_kill's own sanity limit, 30 s from the kill.
    assert k["recovered"], "no replacement replica served within 30 s of the kill"
    assert k["requests_after_recovery"] > 0 and k["errors_after_recovery"] == 0
    assert len(k["replacement_placement"]) == 2 and k["killed"] not in k["replacement_placement"]
    # A client at each replica's own address: the other replica's loses nothing; the killed one's keeps trying.
    victim, survivor = k["direct"]["victim"], k["direct"]["survivor"]
    measure(
        f"Ray node kill, direct ingress: the killed replica's address failed {victim['errors_after_kill']} of "
        f"{victim['requests_after_kill']} requests after the kill ({victim['answered_after_kill']} answered); the other's lost "
        f"{survivor['errors']} of {survivor['requests']}"
    )
    assert survivor["requests"] > 0 and survivor["errors"] == 0
    assert victim["requests_after_kill"] > 0 and victim["slowest_failure_s"] < 30


def test_the_report_has_a_ray_section():
    k = {
        "nodes": "head + 2 workers",
        "replicas": 2,
        "clients": 4,
        "placement": ["worker 1", "worker 2"],
        "killed": "worker 1",
        "requests": 1000,
        "errors": 2,
        "in_flight_at_kill": 4,
        "errors_in_flight": 2,
        "errors_started_after_kill": 0,
        "recovered": True,
        "recover_s": 4.5,
        "requests_after_recovery": 800,
        "errors_after_recovery": 0,
        "replacement_placement": ["worker 2", "worker 2"],
        "direct": {
            "addresses": 2,
            "victim": {
                "requests_after_kill": 70,
                "errors_after_kill": 70,
                "answered_after_kill": 0,
                "error_statuses": [0],
                "slowest_failure_s": 0.01,
            },
            "survivor": {
                "requests_after_kill": 900,
                "errors_after_kill": 0,
                "answered_after_kill": 900,
                "error_statuses": [],
                "slowest_failure_s": 0.0,
            },
        },
    }
    report = {"model": "m", "plan": "full", "passed": True, "seconds": 1.0, "created": "now", "environment": {}, "checks": [], "errors": []}
    run = reliability.Run(reliability.FULL, "m", Path("unused"))
    run.data = report["details"] = {"ray_node_kill": k}
    report["summary"] = reliability.summary(run)
    md = reliability.render_markdown(report)
    assert "## Ray Serve: a worker node killed under load" in md
    assert "| requests in flight at the kill / of them failed | 4 / 2 |" in md
    assert "| seconds to a replacement replica serving | 4.5 |" in md
    assert "| the killed replica's address | 70 | 70 (0) | 0 | 0.01 s |" in md
    assert "| the other replica's address | 900 | 0 | 900 | 0.00 s |" in md
