"""`make reliability`: inject faults into the pipeline and a real server, count what survived.

    python -m pipeline reliability [--quick] [--root DIR] [--model NAME] [--only SECTION ...]

Builds the model's artifacts from scratch in a temporary folder (faults damage them),
then runs four sections, each bounded in time:
  pipeline  SIGKILL of every stage at chosen points of its write and at timed moments,
            a file-size limit (disk full), random byte flips and truncations
  hostile   pickle checkpoints, ONNX external data, unsafe archives, symlinks; hostile
            requests to the shared decoders (OIP shapes, JPEG scans, thin PNGs, multipart, texts)
  served    a real TorchServe on 127.0.0.1: hypothesis fuzzing, the worker killed under
            load, a soak, a stop under load, the security posture
  ray       the same archive on Ray Serve across a multi-node cluster on this machine:
            a worker node killed under load (in-flight errors, recovery, requests after)
and writes reports/reliability.json and reliability.md under --root. Exits 1 if any
check failed. `--quick` is the CI-sized run (about three minutes on two cores).
"""

from __future__ import annotations

import datetime
import json
import shutil
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from pipeline.artifacts import files
from pipeline.artifacts.environment import fingerprint
from pipeline.errors import PipelineError
from pipeline.reliability.faults import KILL_POINTS, STAGE_ARTIFACT, Project, copy_project
from pipeline.settings import DEFAULT_MODEL, Settings, resolve

if TYPE_CHECKING:
    from pipeline.serving.torchserve.server import ServerInfo

SECTIONS = ("pipeline", "hostile", "served", "ray")


@dataclass(frozen=True)
class Plan:
    """How much of each fault to inject: --quick for CI, the default for `make reliability`."""

    name: str
    kill_points: dict[str, tuple[str, ...]]
    timed_kills: tuple[float, ...]  # fractions of the stage's own duration
    disk_full_stages: tuple[str, ...]
    damage_per_artifact: int
    fuzz_examples: int
    soak_requests: int
    soak_concurrency: int
    soak_time_limit_s: float
    worker_kills: int
    held_bodies_s: float  # how long the held-bodies attack lasts
    slow_unauthenticated: tuple[int, float] = (300, 30.0)  # connections and seconds of slow bodies without a token
    h2_streams: tuple[int, float] = (24, 10.0)  # HTTP/2 connections (100 streams each) and seconds


FULL = Plan(
    "full", {stage: KILL_POINTS for stage in STAGE_ARTIFACT}, (0.25, 0.5, 0.75), tuple(STAGE_ARTIFACT), 25, 2000, 50_000, 16, 300.0, 3, 30.0
)
QUICK = Plan(
    "quick",
    {
        "train": ("torn-temp", "after-rename"),
        "trace": ("before-rename", "manifest-write"),
        "export": ("torn-temp",),
        "package": ("temp-created", "after-rename"),
    },
    (),
    ("train", "trace", "export", "package"),
    5,
    500,
    20_000,
    16,
    120.0,
    1,
    12.0,
    slow_unauthenticated=(170, 8.0),  # 50 more than the proxy's slots for a 1 MiB cap
    h2_streams=(6, 4.0),
)


@dataclass(frozen=True)
class Check:
    """One line of the verdict: a promise, whether it held, and the figures behind it."""

    section: str
    name: str
    passed: bool
    detail: str


class Run:
    """Collects the figures and the checks while the sections run."""

    def __init__(self, plan: Plan, model: str, work: Path):
        self.plan = plan
        self.model = model
        self.work = work
        self.built = work / "built"
        self.checks: list[Check] = []
        self.data: dict = {}
        self._cases = 0

    def project(self) -> Project:
        self._cases += 1
        return copy_project(self.built, self.work / f"case-{self._cases:03d}", self.model)

    def check(self, section: str, name: str, passed: bool, detail: str) -> None:
        self.checks.append(Check(section, name, bool(passed), detail))
        mark = "✓" if passed else "✗"
        print(f"  {mark} {section:<8} {name}: {detail}", flush=True)


def _survival(cases) -> str:
    return f"{sum(c.survived for c in cases)}/{len(cases)} survived"


# --- sections -------------------------------------------------------------------------------


def run_pipeline(run: Run) -> None:
    _sigkill_mid_write(run)
    _disk_full_writes(run)
    _damaged_artifacts(run)


def _sigkill_mid_write(run: Run) -> None:
    from pipeline.reliability import faults

    stage_seconds = {key: rec.seconds for key, rec in Project(run.built, run.model).manifest().records.items()}
    kills = []
    for stage, points in run.plan.kill_points.items():
        for point in points:
            kills.append(faults.kill_stage(run.project(), stage, point=point))
        for fraction in run.plan.timed_kills:
            delay = max(stage_seconds[STAGE_ARTIFACT[stage]], 0.05) * fraction
            kills.append(faults.kill_stage(run.project(), stage, delay_s=delay))
    run.data["kills"] = [faults.as_dict(c) for c in kills]
    bad = [f"{c.stage}@{c.point}: {'; '.join(c.problems)}" for c in kills if not c.survived]
    states = {s: sum(c.artifact == s for c in kills) for s in ("previous", "new", "none", "partial")}
    run.check(
        "pipeline",
        "SIGKILL mid-write leaves the previous artifact or none, and the next run completes",
        not bad,
        f"{_survival(kills)}; artifact afterwards {states}" + (f"; {bad[:3]}" if bad else ""),
    )


def _disk_full_writes(run: Run) -> None:
    from pipeline.reliability import faults

    disk = []
    for stage in run.plan.disk_full_stages:
        for mode in ("replace", "fresh"):
            disk.append(faults.disk_full(run.project(), stage, mode))
    run.data["disk_full"] = [faults.as_dict(c) for c in disk]
    bad = [f"{c.stage}/{c.mode}: {'; '.join(c.problems)}" for c in disk if not c.survived]
    run.check(
        "pipeline",
        "disk full (file-size limit): a clear error naming the file, no partial file",
        not bad,
        _survival(disk) + (f"; {bad[:3]}" if bad else ""),
    )


def _damaged_artifacts(run: Run) -> None:
    from pipeline.reliability import faults

    project = run.project()
    damage = faults.damage_sweep(project, run.plan.damage_per_artifact)
    run.data["damage"] = [asdict(c) for c in damage]
    accepted = [f"{c.artifact} {c.damage}: {c.message}" for c in damage if not c.refused]
    run.check(
        "pipeline",
        "any byte change or truncation is refused by hash before parsing",
        not accepted,
        f"{len(damage) - len(accepted)}/{len(damage)} refused" + (f"; {accepted[:3]}" if accepted else ""),
    )


def run_hostile(run: Run) -> None:
    from pipeline.reliability import hostile

    project = run.project()
    cases = hostile.all_cases(project, run.work / "hostile")
    live = hostile.payload_is_live(run.work)
    run.data["hostile"] = [{**asdict(c), "survived": c.survived} for c in cases]
    run.data["pickle_payload_live"] = live
    bad = [f"{c.name}: {c.message}" for c in cases if not c.survived]
    run.check(
        "hostile",
        "hostile files refused by our own check before use",
        not bad and live,
        f"{_survival(cases)}; the pickle payload does run when unpickled: {live}" + (f"; {bad[:3]}" if bad else ""),
    )
    _hostile_requests(run)


def _hostile_requests(run: Run) -> None:
    """The decoders' attacks (pipeline.reliability.decoders): each a 4xx or 200 in time, the worker's memory flat."""
    from pipeline.reliability import decoders

    attacks = decoders.run_attacks()
    run.data["decoder_attacks"] = [{**asdict(a), "survived": a.survived} for a in attacks]
    slow = [f"{a.name}: {a.status} in {a.seconds:.2f} s, +{a.growth_mb:.0f} MB" for a in attacks if not a.survived]
    run.check(
        "hostile",
        f"hostile requests to the decoders answered within their limits, memory within {decoders.MAX_GROWTH_MB:.0f} MB",
        not slow,
        f"{len(attacks) - len(slow)}/{len(attacks)} within limits; slowest {max(a.seconds for a in attacks):.3f} s, "
        f"memory +{max(a.growth_mb for a in attacks):.0f} MB" + (f"; {slow[:3]}" if slow else ""),
    )


def load_bodies(spec, count: int = 64) -> list[str]:
    rng = np.random.default_rng(0)
    bodies = []
    for i in range(count):
        feed = spec.sample_inputs(1 + i % 3, rng)
        bodies.append(json.dumps({t.name: np.asarray(feed[t.name]).tolist() for t in spec.inputs}))
    return bodies


@dataclass(frozen=True)
class Served:
    """The running server every served check aims at, and what it sends: a valid body, its answer, and the load bodies."""

    info: ServerInfo
    settings: Settings
    input_name: str
    bodies: list[str]
    body: bytes
    answer: tuple[int, bytes]


def run_served(run: Run) -> None:
    from pipeline.serving.torchserve import server as serve

    if shutil.which("java") is None:
        run.check("served", "a real TorchServe", False, "java was not found; install openjdk-17-jre-headless")
        return
    spec, _ = resolve(Settings(model=run.model, root=run.built))
    project = run.project()
    bodies = load_bodies(spec)
    body = json.dumps(spec.example_request).encode() if spec.example_request else bodies[0].encode()
    info = serve.start(project.settings, auto_ports=True)
    try:
        served = Served(info, project.settings, spec.inputs[0].name, bodies, body, info.predict(body))
        # The stop under load goes last: it stops this server.
        for served_check in (_security, _fuzzing, _held_bodies, _slow_unauthenticated, _h2_streams, _soak, _worker_kills, _stop_under_load):
            served_check(run, served)
    finally:
        serve.stop(project.settings)


def _security(run: Run, served: Served) -> None:
    from pipeline.reliability import served_faults as sf

    probes = sf.security_probes(served.info)
    run.data["security"] = [asdict(p) for p in probes]
    failed = [p.name for p in probes if not p.passed]
    run.check(
        "served",
        "security posture: loopback only, tokens required, model API off",
        not failed,
        f"{len(probes) - len(failed)}/{len(probes)} probes passed" + (f"; failed: {failed}" if failed else ""),
    )


def _fuzzing(run: Run, served: Served) -> None:
    from pipeline.reliability import fuzz
    from pipeline.reliability import served_faults as sf

    result = fuzz.fuzz_endpoint(served.info, served.input_name, served.body, run.plan.fuzz_examples)
    run.data["fuzz"] = {**asdict(result), "server_errors": result.server_errors, "survived": result.survived}
    run.check(
        "served",
        f"fuzzing ({result.requests} hypothesis bodies): no 5xx, worker unchanged, valid answer unchanged",
        result.survived and result.requests >= run.plan.fuzz_examples,
        f"statuses {result.statuses}; worker {result.worker_pids_before} -> {result.worker_pids_after}"
        + (f"; failures {result.failures[:3]}" if result.failures else ""),
    )
    run.data["form_body_500"] = sf.form_body_probe(served.info)


def _held_bodies(run: Run, served: Served) -> None:
    from pipeline.reliability import served_faults as sf

    held = sf.held_bodies(served.info, served.body, attack_s=run.plan.held_bodies_s)
    run.data["held_bodies"] = {**asdict(held), "survived": held.survived}
    run.check(
        "served",
        f"{held.connections} connections with no token hold {held.sent_bytes:,} of {held.declared_bytes:,}-byte bodies for "
        f"{held.attack_s:.0f}s: memory bounded, answered within {held.recovery_limit_s:.0f}s once they close",
        held.survived,
        f"frontend and proxy {held.frontend_rss_before / (1 << 20):.0f} -> peak {held.frontend_rss_peak / (1 << 20):.0f} MiB "
        f"(bound +{held.memory_bound / (1 << 20):.0f}); cut off and reopened {held.reconnects} times; "
        f"a request during the attack: {held.during_status}; "
        + (f"answered {held.recovery_s:.2f}s after they closed" if held.recovery_s is not None else "not answered in time"),
    )


def _slow_unauthenticated(run: Run, served: Served) -> None:
    from pipeline.reliability import served_faults as sf

    connections, seconds = run.plan.slow_unauthenticated
    slow = sf.slow_unauthenticated(served.info, served.body, connections, seconds)
    run.data["slow_unauthenticated"] = {**asdict(slow), "answered_share": slow.answered_share, "survived": slow.survived}
    run.check(
        "served",
        f"{slow.connections} connections with no token send {slow.sent_bytes} of {slow.declared_bytes}-byte bodies for "
        f"{slow.attack_s:.0f}s: 90% of requests with the token answered within {slow.latency_limit_s:.0f}s",
        slow.survived,
        f"{slow.answered}/{slow.requests} answered, p50 {slow.latency_p50_s or 0:.3f}s, max {slow.latency_max_s or 0:.3f}s; "
        f"attackers closed and reopened {slow.reconnects} times, {slow.refused_401} after a 401",
    )


def _h2_streams(run: Run, served: Served) -> None:
    from pipeline.reliability import served_faults as sf

    connections, seconds = run.plan.h2_streams
    h2 = sf.h2_streams(served.info, connections, attack_s=seconds)
    run.data["h2_streams"] = {**asdict(h2), "survived": h2.survived}
    run.check(
        "served",
        f"{h2.connections} HTTP/2 connections of {h2.streams} streams declaring {h2.declared_bytes:,}-byte bodies: refused, "
        "the proxy's memory bounded",
        h2.survived,
        f"{h2.refused} refused, {h2.spoken} answered in HTTP/2; proxy {h2.proxy_rss_before / (1 << 20):.0f} -> peak "
        f"{h2.proxy_rss_peak / (1 << 20):.0f} -> after {h2.proxy_rss_after / (1 << 20):.0f} MiB (bound +{h2.memory_bound / (1 << 20):.0f})",
    )


def _soak(run: Run, served: Served) -> None:
    from pipeline.reliability import served_faults as sf

    plan = run.plan
    soak = sf.soak(served.info, served.bodies, plan.soak_requests, plan.soak_concurrency, plan.soak_time_limit_s)
    run.data["soak"] = {**asdict(soak), "growth_pct": soak.growth_pct, "survived": soak.survived}
    load = soak.load
    run.check(
        "served",
        f"soak: {plan.soak_requests} requests at concurrency {plan.soak_concurrency} within {plan.soak_time_limit_s:.0f}s, zero errors",
        soak.survived,
        f"{load['requests']} requests, {load['errors']} errors in {load['seconds']:.1f}s "
        f"({load['requests_per_s']:.0f}/s, p50 {load['p50_ms']:.1f} ms, p99 {load['p99_ms']:.1f} ms)",
    )
    run.check(
        "served",
        "soak: server resident memory grows under 10% after warm-up",
        soak.growth_pct < 10,
        f"{sf.rss_mib(soak.rss_before):.0f} -> {sf.rss_mib(soak.rss_after):.0f} MiB ({soak.growth_pct:+.1f}%), "
        f"peak {soak.rss_peak_total / (1 << 20):.0f} MiB",
    )


def _worker_kills(run: Run, served: Served) -> None:
    from pipeline.reliability import served_faults as sf

    valid = (served.body, served.answer[1])
    kills = [sf.kill_worker_in_flight(served.info, served.bodies, valid) for _ in range(run.plan.worker_kills)]
    run.data["worker_kills"] = [{**asdict(k), "survived": k.survived} for k in kills]
    run.check(
        "served",
        "worker SIGKILLed under load: only in-flight requests fail, every later one succeeds",
        all(k.survived for k in kills),
        "; ".join(
            f"{k.errors} in-flight errors {k.error_status} of {k.requests}, recovered in {k.recovery_s:.2f}s, "
            f"then {k.after_requests - k.after_errors}/{k.after_requests} OK"
            for k in kills
        ),
    )


def _stop_under_load(run: Run, served: Served) -> None:
    from pipeline.reliability import served_faults as sf

    stop = sf.stop_under_load(served.settings, served.info, served.bodies, served.body)
    run.data["graceful_stop"] = {**asdict(stop), "survived": stop.survived}
    run.check(
        "served",
        "stop under load: no process left, ports closed, token removed; a restart serves",
        stop.survived,
        f"stopped in {stop.stop_s:.1f}s, left {stop.processes_left or 'nothing'}, "
        f"restart answered {stop.restart_status} after {stop.restart_s:.1f}s",
    )


def run_ray(run: Run) -> None:
    from pipeline.reliability.ray_nodes import node_kill_in_child

    project = run.project()
    k = node_kill_in_child(project.settings, run.work / "ray-node-kill")
    run.data["ray_node_kill"] = k
    run.check("ray", "two replicas land on the two worker nodes", k["replicas_on_both_workers"], f"placement {k['placement']}")
    run.check(
        "ray",
        "worker node killed under load: only requests in flight at the kill fail",
        k["errors_started_after_kill"] == 0 and k["errors"] == k["errors_in_flight"],
        f"{k['errors']} errors {k['error_statuses']} of {k['requests']} requests; {k['in_flight_at_kill']} were in flight at the kill, "
        f"{k['errors_started_after_kill']} failures started after it",
    )
    run.check(
        "ray",
        "a replacement replica serves within 30 s",
        bool(k["recovered"]) and k["recover_s"] <= 30,
        f"recovered in {k['recover_s']:.1f}s; replicas now on {k['replacement_placement']}" if k["recovered"] else "not recovered",
    )
    run.check(
        "ray",
        "every request after recovery succeeds",
        k["requests_after_recovery"] > 0 and k["errors_after_recovery"] == 0,
        f"{k['requests_after_recovery'] - k['errors_after_recovery']}/{k['requests_after_recovery']} OK",
    )
    survivor = k["direct"].get("survivor")
    run.check(
        "ray",
        "a client at the other replica's own address loses nothing",
        bool(survivor) and survivor["requests"] > 0 and survivor["errors"] == 0,
        f"{survivor['requests'] - survivor['errors']}/{survivor['requests']} OK" if survivor else f"replica addresses: {k['direct']}",
    )


SECTION_RUNNERS: dict[str, Callable[[Run], None]] = {"pipeline": run_pipeline, "hostile": run_hostile, "served": run_served, "ray": run_ray}


# --- report ---------------------------------------------------------------------------------


def summary(run: Run) -> dict:
    d = run.data
    faults = [*d.get("kills", []), *d.get("disk_full", []), *d.get("worker_kills", [])]
    if "graceful_stop" in d:
        faults.append(d["graceful_stop"])
    bad_inputs = [*d.get("damage", []), *d.get("hostile", [])]
    fuzz = d.get("fuzz", {})
    # Requests that must all succeed: the soak, and everything after each worker's recovery.
    kills = d.get("worker_kills", [])
    requests = (d["soak"]["load"]["requests"] if "soak" in d else 0) + sum(k["after_requests"] for k in kills)
    errors = (d["soak"]["load"]["errors"] if "soak" in d else 0) + sum(k["after_errors"] for k in kills)
    return {
        "faults_injected": len(faults),
        "faults_survived": sum(bool(f.get("survived")) for f in faults),
        "bad_files_tried": len(bad_inputs),
        "bad_files_refused": sum(bool(b.get("refused")) for b in bad_inputs),
        "fuzz_requests": fuzz.get("requests", 0),
        "fuzz_5xx": fuzz.get("server_errors", 0),
        "load_requests": requests,
        "load_errors": errors,
        "in_flight_errors_at_worker_kill": sum(k["errors"] for k in kills),
        "recovery_s": [k["recovery_s"] for k in kills],
        "memory_growth_pct": round(d["soak"]["growth_pct"], 2) if "soak" in d else None,
    }


def render_markdown(report: dict) -> str:
    """reliability.md: the verdict and its figures, every check, then one section per kind of fault that ran."""
    d = report["details"]
    lines = [*_md_verdict(report), *_md_checks(report["checks"])]
    for key, section in _DETAIL_SECTIONS:
        if key in d:
            lines += section(d)
    if report["errors"]:
        lines += _md_heading("Sections that crashed") + [f"- {e['section']}: {_cell(e['error'])}" for e in report["errors"]]
    return "\n".join(lines) + "\n"


def _md_heading(title: str, *first_lines: str) -> list[str]:
    return ["", f"## {title}", "", *first_lines]


def _md_verdict(report: dict) -> list[str]:
    s = report["summary"]
    growth = "-" if s["memory_growth_pct"] is None else f"{s['memory_growth_pct']:+.1f}%"
    return [
        f"# Reliability: {report['model']} ({report['plan']} run)",
        "",
        f"{'PASS' if report['passed'] else 'FAIL'} — {sum(c['passed'] for c in report['checks'])}/{len(report['checks'])} "
        f"checks held; {report['seconds']:.0f}s on {report['environment'].get('cpu', 'this machine')}, {report['created']}.",
        "",
        "| figure | value |",
        "| --- | ---: |",
        f"| faults injected / survived | {s['faults_injected']} / {s['faults_survived']} |",
        f"| bad files tried / refused | {s['bad_files_tried']} / {s['bad_files_refused']} |",
        f"| fuzz requests / 5xx | {s['fuzz_requests']} / {s['fuzz_5xx']} |",
        f"| load requests / errors (soak, and after each worker recovery) | {s['load_requests']} / {s['load_errors']} |",
        f"| in-flight errors when the worker was killed | {s['in_flight_errors_at_worker_kill']} |",
        f"| time to recovery after worker SIGKILL (s) | {', '.join(f'{r:.2f}' for r in s['recovery_s']) or '-'} |",
        f"| server memory growth over the soak | {growth} |",
    ]


def _md_checks(checks: list[dict]) -> list[str]:
    return [
        *_md_heading("Checks", "| section | promise | result | figures |", "| --- | --- | --- | --- |"),
        *(f"| {c['section']} | {c['name']} | {'✓' if c['passed'] else '✗ FAIL'} | {_cell(c['detail'])} |" for c in checks),
    ]


def _md_kills(d: dict) -> list[str]:
    return [
        *_md_heading(
            "SIGKILL mid-write",
            "| stage | kill point | killed | artifact after | temporaries left | next run | s |",
            "| --- | --- | --- | --- | ---: | --- | ---: |",
        ),
        *(
            f"| {k['stage']} | {k['point']} | {'yes' if k['killed'] else 'finished first'} | {k['artifact']} | "
            f"{k['leftovers']} | {'completed' if k['recovered'] else '✗ ' + _cell('; '.join(k['problems']))} | {k['seconds']:.1f} |"
            for k in d["kills"]
        ),
    ]


def _md_disk_full(d: dict) -> list[str]:
    return [
        *_md_heading(
            "Disk full (file-size limit of half the artifact)",
            "| stage | previous artifact | exit | artifact after | error |",
            "| --- | --- | ---: | --- | --- |",
        ),
        *(
            f"| {c['stage']} | {'present' if c['mode'] == 'replace' else 'absent'} | {c['exit_code']} | {c['artifact']} | "
            f"{'✓' if c['survived'] else '✗'} {_cell(c['message'][:160])} |"
            for c in d["disk_full"]
        ),
    ]


def _md_damage(d: dict) -> list[str]:
    lines = _md_heading(
        "Damaged artifacts (refused by hash)", "| artifact | byte changes refused | truncations refused |", "| --- | ---: | ---: |"
    )
    for key in dict.fromkeys(c["artifact"] for c in d["damage"]):
        flips = [c for c in d["damage"] if c["artifact"] == key and c["damage"].startswith("byte")]
        cuts = [c for c in d["damage"] if c["artifact"] == key and c["damage"].startswith("trunc")]
        lines.append(f"| {key} | {sum(c['refused'] for c in flips)}/{len(flips)} | {sum(c['refused'] for c in cuts)}/{len(cuts)} |")
    return lines


def _md_hostile(d: dict) -> list[str]:
    return [
        *_md_heading("Hostile files", "| kind | input | refused | payload ran | message |", "| --- | --- | --- | --- | --- |"),
        *(
            f"| {c['kind']} | {_cell(c['name'])} | {'✓' if c['refused'] else '✗'} | {'YES' if c['payload_ran'] else 'no'} | "
            f"{_cell(c['message'][:180])} |"
            for c in d["hostile"]
        ),
    ]


def _md_decoder_attacks(d: dict) -> list[str]:
    title = "Hostile requests to the decoders"
    rows = [
        f"| {_cell(a['name'])} | {a['status']} | {a['seconds']:.3f} ({a['limit_s']:g}) | +{a['growth_mb']:.0f} MB | {_cell(a['message'])} |"
        for a in d["decoder_attacks"]
    ]
    return _md_heading(title, "| request | status | seconds (limit) | memory | message |", "| --- | --- | --- | --- | --- |") + rows


def _md_fuzz(d: dict) -> list[str]:
    f = d["fuzz"]
    lines = [
        *_md_heading(
            f"Fuzzing: {f['requests']} hypothesis-generated bodies", "| body class | sent | status codes |", "| --- | ---: | --- |"
        ),
        *(
            f"| {label} | {sum(codes.values())} | {', '.join(f'{k}: {v}' for k, v in codes.items())} |"
            for label, codes in f["by_class"].items()
        ),
        "",
        f"Worker pid before {f['worker_pids_before']}, after {f['worker_pids_after']}; a valid request answered "
        f"`{f['valid_after'][1][:60]}` after as before. 5xx or no answer: {f['server_errors']}.",
    ]
    if "form_body_500" in d:
        fb = d["form_body_500"]
        lines += [
            "",
            f"Known TorchServe 0.12 limitation, outside the fuzzed JSON endpoint: a form-encoded body with a bad "
            f"%-escape (`{fb['body']}`, `{fb['content_type']}`) gets {fb['status']} from the Java frontend's decoder "
            f"before any worker sees it (worker unchanged: {fb['worker_unchanged']}).",
        ]
    return lines


def _md_load(d: dict) -> list[str]:
    load = d["soak"]["load"]
    lines = [
        *_md_heading(
            "Load", "| run | requests | errors | seconds | req/s | p50 ms | p99 ms |", "| --- | ---: | ---: | ---: | ---: | ---: | ---: |"
        ),
        f"| soak, concurrency {load['concurrency']} | {load['requests']} | {load['errors']} | {load['seconds']:.1f} | "
        f"{load['requests_per_s']:.0f} | {load['p50_ms']:.2f} | {load['p99_ms']:.2f} |",
    ]
    for k in d.get("worker_kills", []):
        lines.append(
            f"| worker SIGKILL, concurrency {k['concurrency']} | {k['requests']} | {k['errors']} "
            f"({', '.join(f'{c}: {n}' for c, n in k['error_status'].items())}) | | | | |"
        )
        lines.append(
            f"| after recovery ({k['recovery_s']:.2f}s; new worker READY after {k['worker_ready_s']:.2f}s) | "
            f"{k['after_requests']} | {k['after_errors']} | | | | |"
        )
    return lines + _md_memory(d["soak"])


def _md_memory(so: dict) -> list[str]:
    lines = [
        "",
        f"Server resident memory after a {so['warmup_requests']}-request warm-up, then after the soak:",
        "",
        "| process | before MiB | after MiB | growth |",
        "| --- | ---: | ---: | ---: |",
    ]
    for name, before in so["rss_before"].items():
        after = so["rss_after"].get(name, 0)
        lines.append(f"| {name} | {before / 2**20:.1f} | {after / 2**20:.1f} | {100 * (after - before) / before:+.1f}% |")
    lines.append(
        f"| all | {sum(so['rss_before'].values()) / 2**20:.1f} | {sum(so['rss_after'].values()) / 2**20:.1f} | {so['growth_pct']:+.1f}% |"
    )
    return lines


def _md_graceful_stop(d: dict) -> list[str]:
    g = d["graceful_stop"]
    return _md_heading(
        "Stop under load",
        f"`serve.stop` with 8 clients sending took {g['stop_s']:.2f}s; load statuses "
        f"{g['load_status']} (0 = connection refused once the server was gone); processes left: "
        f"{g['processes_left'] or 'none'}; ports still open: {g['ports_still_open'] or 'none'}; key file left: "
        f"{g['key_file_left']}; restart answered {g['restart_status']} after {g['restart_s']:.2f}s.",
    )


def _md_ray_node_kill(d: dict) -> list[str]:
    k = d["ray_node_kill"]
    recover = f"{k['recover_s']:.1f}" if k["recovered"] else "not recovered"
    return _md_heading(
        "Ray Serve: a worker node killed under load",
        f"{k['nodes']}; {k['replicas']} replicas placed on {', '.join(k['placement'])}; {k['clients']} closed-loop clients "
        f"through the head's proxy; {k['killed']} killed without warning.",
        "",
        "| figure | value |",
        "| --- | ---: |",
        f"| requests / errors | {k['requests']} / {k['errors']} |",
        f"| requests in flight at the kill / of them failed | {k['in_flight_at_kill']} / {k['errors_in_flight']} |",
        f"| failures of requests started after the kill | {k['errors_started_after_kill']} |",
        f"| seconds to a replacement replica serving | {recover} |",
        f"| requests after recovery / errors | {k['requests_after_recovery']} / {k['errors_after_recovery']} |",
        f"| replicas after recovery | {', '.join(k['replacement_placement'])} |",
        *_md_direct(k.get("direct") or {}),
    )


def _md_direct(direct: dict) -> list[str]:
    """The clients at each replica's own address (direct ingress), beside the proxy's."""
    victim, survivor = direct.get("victim"), direct.get("survivor")
    if not victim or not survivor:
        return []
    statuses = ", ".join(str(s) for s in victim["error_statuses"]) or "none"
    return [
        "",
        "One more client at each replica's own address (direct ingress), beside the proxy's clients: what a client "
        "that holds a replica's address sees. Status 0 is a refused or broken connection; such a client waits "
        "0.1 s before its next request.",
        "",
        "| client at | requests after the kill | failed (statuses) | answered | slowest failure |",
        "| --- | ---: | ---: | ---: | ---: |",
        f"| the killed replica's address | {victim['requests_after_kill']} | {victim['errors_after_kill']} ({statuses}) | "
        f"{victim['answered_after_kill']} | {victim['slowest_failure_s']:.2f} s |",
        f"| the other replica's address | {survivor['requests_after_kill']} | {survivor['errors_after_kill']} | "
        f"{survivor['answered_after_kill']} | {survivor['slowest_failure_s']:.2f} s |",
    ]


def _md_security(d: dict) -> list[str]:
    return [
        *_md_heading("Security posture (probed live)", "| probe | expected | got | result |", "| --- | --- | --- | --- |"),
        *(f"| {p['name']} | {p['expected']} | {_cell(p['got'][:90])} | {'✓' if p['passed'] else '✗'} |" for p in d["security"]),
    ]


# The sections after the checks, in report order, each under the key of the figures it shows.
_DETAIL_SECTIONS: tuple[tuple[str, Callable[[dict], list[str]]], ...] = (
    ("kills", _md_kills),
    ("disk_full", _md_disk_full),
    ("damage", _md_damage),
    ("hostile", _md_hostile),
    ("decoder_attacks", _md_decoder_attacks),
    ("fuzz", _md_fuzz),
    ("soak", _md_load),
    ("graceful_stop", _md_graceful_stop),
    ("ray_node_kill", _md_ray_node_kill),
    ("security", _md_security),
)


def _cell(text: str) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


@dataclass(frozen=True)
class SuiteOptions:
    """What `run` does: the plan (quick or full), the model, the sections, where reports go."""

    quick: bool = False
    root: Path = Path(".")
    model: str = DEFAULT_MODEL
    sections: tuple[str, ...] = SECTIONS
    work: Path | None = None  # keep the working copies here instead of a temporary folder


def run(args: SuiteOptions) -> int:
    """Run the sections asked for and write reports/reliability.{json,md}; 1 if any check failed."""
    plan = QUICK if args.quick else FULL
    sections = list(args.sections)
    start = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="reliability-") as tmp:
        work = Path(args.work or tmp).resolve()
        run = Run(plan, args.model, work)
        print(f"reliability ({plan.name}): building {args.model} in {work}", flush=True)
        if not _build(run, args.model):
            return 1
        errors = _run_sections(run, sections)
    report = _report(run, sections, errors, start)
    out = Path(args.root) / "reports"
    files.write_json(out / "reliability.json", report)
    files.write_text(out / "reliability.md", render_markdown(report))
    _print_verdict(run, report, out / "reliability.md")
    return 0 if report["passed"] else 1


def _build(run: Run, model: str) -> bool:
    """Every stage from scratch into run.built, the copy the cases start from; False (and why, on stderr) if it fails."""
    from pipeline.stages import run_all

    try:
        run_all(Settings(model=model, root=run.built))
    except PipelineError as exc:
        print(f"error: could not build {model}: {exc}", file=sys.stderr)
        return False
    run.model = resolve(Settings(model=model, root=run.built))[0].name
    return True


def _run_sections(run: Run, sections: list[str]) -> list[dict]:
    """Each section in turn; the sections that crashed, with their tracebacks."""
    errors = []
    for section in sections:
        try:
            SECTION_RUNNERS[section](run)
        except Exception as exc:  # one section crashing must not hide the others' results
            errors.append({"section": section, "error": f"{type(exc).__name__}: {exc}", "traceback": traceback.format_exc()})
            run.check(section, "section ran to the end", False, f"{type(exc).__name__}: {exc}")
    return errors


def _report(run: Run, sections: list[str], errors: list[dict], start: float) -> dict[str, Any]:
    return {
        "model": run.model,
        "plan": run.plan.name,
        "sections": sections,
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "seconds": round(time.monotonic() - start, 1),
        "passed": all(c.passed for c in run.checks),
        "summary": summary(run),
        "checks": [asdict(c) for c in run.checks],
        "errors": errors,
        "environment": fingerprint(),
        "details": run.data,
    }


def _print_verdict(run: Run, report: dict[str, Any], markdown: Path) -> None:
    s = report["summary"]
    print(
        f"\n{'PASS' if report['passed'] else 'FAIL'}: {sum(c.passed for c in run.checks)}/{len(run.checks)} checks held in "
        f"{report['seconds']:.0f}s; faults {s['faults_survived']}/{s['faults_injected']} survived, bad files "
        f"{s['bad_files_refused']}/{s['bad_files_tried']} refused, fuzz 5xx {s['fuzz_5xx']}/{s['fuzz_requests']}, "
        f"load errors {s['load_errors']}/{s['load_requests']}, in-flight errors at worker kill "
        f"{s['in_flight_errors_at_worker_kill']}\n  report: {markdown}"
    )
