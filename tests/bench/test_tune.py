"""python -m pipeline tune: the pick on a hand-made table, the threads an archive carries, and a real sweep on TorchServe."""

from __future__ import annotations

import json
import math
import zipfile

import psutil
import pytest
import yaml

from pipeline.artifacts import files
from pipeline.artifacts.manifest import Manifest
from pipeline.artifacts.names import ARCHIVE_CONFIG, ARCHIVE_CONTRACT, MAR
from pipeline.bench import tune
from pipeline.bench.tune import ServingConfig, TuneSettings
from pipeline.errors import PipelineError
from pipeline.models import load_spec
from pipeline.serving.common.contract import Contract
from pipeline.serving.common.predictor import session_config
from pipeline.settings import Settings
from pipeline.stages.package import archive_contract
from tests.helpers import FakeContext, copy_root

CONCURRENCY = (1, 4)


def row(name: str, *runs: tuple[int, float, float, int]) -> dict:
    """A table row: (concurrency, requests/s, p99 ms, errors) per run."""
    return {
        "config": name,
        "runs": [{"concurrency": c, "requests_per_s": rps, "p50_ms": p99 / 2, "p99_ms": p99, "errors": e} for c, rps, p99, e in runs],
    }


TABLE = [
    row("b1-w1-t1", (1, 400.0, 2.0, 0), (16, 900.0, 4.0, 0)),
    row("b8-d1-w1-t1", (1, 350.0, 3.0, 0), (16, 1500.0, 4.5, 0)),  # the most requests/s of those that meet 5 ms
    row("b32-d5-w1-t1", (1, 150.0, 7.0, 0), (16, 2500.0, 4.0, 0)),  # faster still, but its p99 at one client misses
    row("b8-d1-w2-t1", (1, 390.0, 2.5, 0), (16, 3000.0, 3.0, 2)),  # errors never qualify
    {"config": "b8-d1-w2-t2", "runs": [], "failed": "tune: the workers did not start"},
]


def test_pick_takes_the_most_requests_at_the_top_concurrency_among_configs_meeting_the_goal_everywhere():
    choice = tune.pick(TABLE, 5.0)
    assert choice["chosen"] == "b8-d1-w1-t1"
    assert choice["met"] == ["b1-w1-t1", "b8-d1-w1-t1"]
    assert "b32-d5-w1-t1" not in choice["met"] and "b8-d1-w2-t1" not in choice["met"]


def test_pick_names_the_closest_when_nothing_meets_the_goal():
    choice = tune.pick(TABLE, 1.0)
    assert choice["chosen"] is None and choice["met"] == []
    assert choice["closest"] == "b1-w1-t1"  # the lowest worst p99 (4 ms) among configs with no errors


def test_a_tie_on_requests_goes_to_the_lower_p99():
    table = [row("slow", (1, 100.0, 4.0, 0)), row("quick", (1, 100.0, 2.0, 0))]
    assert tune.pick(table, 5.0)["chosen"] == "quick"


def test_a_run_without_answers_never_meets_the_goal():
    assert not tune.meets(row("empty", (1, 0.0, math.nan, 0)), 5.0)
    assert tune.worst_p99({"config": "failed", "runs": [], "failed": "x"}) == math.inf


def test_the_pareto_front_keeps_only_configs_nothing_beats_on_both():
    # b1 (4 ms, 900/s), b8 (4.5 ms, 1500/s), b32 (7 ms, 2500/s): each trades p99 for requests; errors are left out.
    assert tune.pareto(TABLE) == ["b1-w1-t1", "b8-d1-w1-t1", "b32-d5-w1-t1"]
    dominated = [*TABLE, row("worse", (1, 100.0, 8.0, 0), (16, 800.0, 8.0, 0))]
    assert "worse" not in tune.pareto(dominated)


def test_the_grid_has_batch_1_once_and_delays_only_for_larger_batches():
    configs = tune.grid(TuneSettings(batch_sizes=(1, 8), delays_ms=(1, 5), workers=(1, 2), threads=(1,)))
    assert [c.name for c in configs] == ["b1-w1-t1", "b1-w2-t1", "b8-d1-w1-t1", "b8-d1-w2-t1", "b8-d5-w1-t1", "b8-d5-w2-t1"]


def test_the_default_grid_leaves_out_multi_threaded_workers_that_overfill_the_cores(monkeypatch):
    monkeypatch.setattr(tune, "physical_cores", lambda: 2)
    default = tune.grid(TuneSettings())
    assert {(c.workers, c.threads) for c in default} == {(1, 1), (2, 1), (1, 2)}  # not 2 workers x 2 threads on 2 cores
    assert len(default) == 7 * 3  # batch 1, and batches 8 and 32 at 1, 2 and 5 ms
    explicit = tune.grid(TuneSettings(batch_sizes=(1,), threads=(1, 2)))
    assert {(c.workers, c.threads) for c in explicit} == {(1, 1), (2, 1), (1, 2), (2, 2)}
    monkeypatch.setattr(tune, "physical_cores", lambda: 1)
    assert {c.threads for c in tune.grid(TuneSettings(batch_sizes=(1,)))} == {1}


def test_a_config_becomes_the_package_stages_settings():
    applied = ServingConfig(32, 2, 2, 1).applied(Settings(model="simple_nn", cuda_precision="fp32"))
    assert (applied.serve_batch_size, applied.serve_max_batch_delay_ms, applied.serve_workers, applied.serve_threads) == (32, 2, 2, 1)
    assert applied.cuda_precision == "fp32"


def test_the_archives_contract_carries_the_thread_count_only_when_one_was_chosen():
    spec = load_spec("simple_nn")
    assert archive_contract(Settings(serve_threads=1), spec)["intra_op_threads"] == 1
    assert "intra_op_threads" not in archive_contract(Settings(), spec)


def test_the_contracts_thread_count_reaches_the_session_config():
    """Precedence: the operator's explicit threads, then the archive's contract, then the server's default."""
    base = archive_contract(Settings(), load_spec("simple_nn"))
    tuned, plain = Contract({**base, "intra_op_threads": 1}), Contract(base)
    assert tuned.intra_op_threads == 1 and plain.intra_op_threads is None
    assert session_config(tuned, None, None).threads == 1
    assert session_config(tuned, None, None, default_threads=4).threads == 1  # Ray's num_cpus yields to the archive
    assert session_config(tuned, None, 3).threads == 3  # an explicit OMP_NUM_THREADS still wins
    assert session_config(plain, None, None).threads is None  # ONNX Runtime's own choice
    assert session_config(plain, None, None, default_threads=2).threads == 2


def test_the_handler_opens_its_session_with_the_archives_threads(built_root, tmp_path, monkeypatch):
    from pipeline.serving.torchserve.handler import OnnxHandler

    with zipfile.ZipFile(built_root / "model_store" / "simple_nn.mar") as zf:
        zf.extractall(tmp_path)
    data = json.loads((tmp_path / ARCHIVE_CONTRACT).read_text())
    (tmp_path / ARCHIVE_CONTRACT).write_text(json.dumps({**data, "intra_op_threads": 1}))

    def threads() -> int:
        handler = OnnxHandler()
        handler(None, FakeContext(tmp_path))
        assert handler.predictor is not None
        return handler.predictor.session.get_session_options().intra_op_num_threads

    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    assert threads() == 1
    monkeypatch.setenv("OMP_NUM_THREADS", "2")
    assert threads() == 2


def test_tune_refuses_to_sweep_threads_under_an_omp_num_threads(tmp_path, monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    with pytest.raises(PipelineError, match="OMP_NUM_THREADS=1 is set"):
        tune.run(TuneSettings(root=tmp_path))


# A real sweep: two configs on TorchServe, one second per run; a generous goal, so noise cannot miss it.
GRID = dict(concurrency=CONCURRENCY, seconds=1.0, batch_sizes=(1, 8), delays_ms=(1,), workers=(1,), threads=(1,))


def _servers_left() -> list[psutil.Process]:
    left = []
    for p in psutil.process_iter(["cmdline"]):
        cmdline = " ".join(p.info["cmdline"] or [])
        if "tune-" in cmdline and ("torchserve" in cmdline or "model_server" in cmdline):
            left.append(p)
    return left


@pytest.fixture(scope="module")
def tuned(built_root, tmp_path_factory):
    root = tmp_path_factory.mktemp("tune")
    copy_root(built_root, root)
    return root, tune.run(TuneSettings(root=root, p99_ms=1000.0, **GRID))


@pytest.mark.slow
def test_the_chosen_config_meets_the_goal_at_every_concurrency(tuned):
    _, report = tuned
    assert report["grid"] == ["b1-w1-t1", "b8-d1-w1-t1"]
    chosen = next(r for r in report["table"] if r["config"] == report["chosen"])
    assert [r["concurrency"] for r in chosen["runs"]] == list(CONCURRENCY)
    assert all(r["p99_ms"] <= 1000.0 and r["errors"] == 0 and r["requests"] > 0 for r in chosen["runs"])
    best = max((r for r in report["table"] if r["config"] in report["met"]), key=tune.throughput)
    assert report["chosen"] == best["config"]
    assert not _servers_left()


@pytest.mark.slow
def test_the_archive_is_packaged_again_with_the_choice_and_the_manifest_says_so(tuned):
    root, report = tuned
    chosen = report["chosen_config"]
    manifest = Manifest(root, "simple_nn")
    mar = manifest.records[MAR]
    with zipfile.ZipFile(root / mar.path) as zf:
        config = yaml.safe_load(zf.read(ARCHIVE_CONFIG))
        io_contract = json.loads(zf.read(ARCHIVE_CONTRACT))
    assert (config["batchSize"], config["maxBatchDelay"], config["minWorkers"], config["maxWorkers"]) == (
        chosen["batch_size"],
        chosen["max_batch_delay_ms"],
        chosen["workers"],
        chosen["workers"],
    )
    assert io_contract["intra_op_threads"] == chosen["threads"]
    assert mar.details["model_config"] == config and mar.settings["contract"]["intra_op_threads"] == chosen["threads"]
    record = manifest.records["tune"]
    assert record.details["chosen"] == chosen and record.details["met"] is True and record.details["goal_p99_ms"] == 1000.0
    assert record.inputs["archive"] == mar.sha256
    assert record.sha256 == files.sha256_file(root / "reports" / "simple_nn" / "tune.json")


@pytest.mark.slow
def test_the_report_has_the_table_the_choice_and_the_pareto_front(tuned):
    root, report = tuned
    folder = root / "reports" / "simple_nn"
    assert json.loads((folder / "tune.json").read_text()) == json.loads(json.dumps(report))
    md = (folder / "tune.md").read_text()
    assert f"**Chosen: {report['chosen']}**" in md and "## Every config" in md
    assert all(name in md for name in report["grid"])
    assert (folder / "tune.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert report["chosen"] in report["pareto"]


@pytest.mark.slow
def test_an_impossible_goal_names_the_closest_and_leaves_the_archive_as_it_was(tuned, tmp_path):
    root = tmp_path / "project"
    copy_root(tuned[0], root)
    manifest = Manifest(root, "simple_nn")
    before = files.sha256_file(root / manifest.records[MAR].path)
    one = {**GRID, "batch_sizes": (1,)}
    with pytest.raises(PipelineError, match=r"no config met p99 ≤ 0.001 ms .* the closest is b1-w1-t1.*left as it was"):
        tune.run(TuneSettings(root=root, p99_ms=0.001, **one))
    manifest = Manifest(root, "simple_nn")
    assert files.sha256_file(root / manifest.records[MAR].path) == before == manifest.records[MAR].sha256
    report = json.loads((root / "reports" / "simple_nn" / "tune.json").read_text())
    assert report["chosen"] is None and report["closest"] == "b1-w1-t1" and report["archive"] is None
    assert "No config met p99 ≤ 0.001 ms" in (root / "reports" / "simple_nn" / "tune.md").read_text()
    assert manifest.records["tune"].details["met"] is False
    assert not _servers_left()


@pytest.mark.slow
def test_ray_serve_opens_the_tuned_archive_with_its_threads_over_num_cpus(tuned, built_root, tmp_path):
    from pipeline.serving.ray.app import RayAppOptions, load

    def threads(mar, folder) -> int:
        options = RayAppOptions(archive=str(mar), sha256=files.sha256_file(mar), token_file="k.json", num_cpus=2)
        folder.mkdir()
        predictor, _, _ = load(options, folder)
        return predictor.session.get_session_options().intra_op_num_threads

    root, report = tuned
    assert threads(root / "model_store" / "simple_nn.mar", tmp_path / "tuned") == report["chosen_config"]["threads"] == 1
    assert threads(built_root / "model_store" / "simple_nn.mar", tmp_path / "plain") == 2  # no threads in the archive: num_cpus


def test_a_ray_config_is_named_and_packaged_as_ray_takes_it():
    config = ServingConfig(8, 2, 2, 1, "ray")
    assert config.name == "ray-b8-d2-r2-t1"
    assert config.options() == "--batch-size 8 --max-batch-delay-ms 2 --threads 1"  # replicas are serve's, not the archive's
    assert config.serve_command("simple_nn") == "python -m pipeline serve --on ray --model simple_nn --replicas 2"
    assert [c.name for c in tune.grid(TuneSettings(on="ray", batch_sizes=(1,), workers=(1, 2), threads=(1,)))] == [
        "ray-b1-r1-t1",
        "ray-b1-r2-t1",
    ]
    assert tune.report_stem("int8", "ray") == "tune-ray-int8" and tune.report_stem(None) == "tune"


@pytest.mark.slow
def test_a_sweep_on_ray_serve_spreads_over_the_replicas_and_packages_the_choice(built_root, tmp_path):
    """Two configs on real local Ray clusters (one and two replicas); the pick's batching goes into the archive."""
    pytest.importorskip("ray", reason="the ray extra is not installed (make test installs it)")
    root = tmp_path / "project"
    copy_root(built_root, root)
    grid = {**GRID, "batch_sizes": (8,), "delays_ms": (2,), "workers": (1, 2)}
    report = tune.run(TuneSettings(root=root, on="ray", p99_ms=1000.0, **grid))
    assert report["grid"] == ["ray-b8-d2-r1-t1", "ray-b8-d2-r2-t1"]
    for row in report["table"]:
        assert [r["concurrency"] for r in row["runs"]] == list(CONCURRENCY), row.get("failed")
        assert all(r["errors"] == 0 and r["requests"] > 0 for r in row["runs"])
    with zipfile.ZipFile(root / Manifest(root, "simple_nn").records[MAR].path) as zf:
        config = yaml.safe_load(zf.read(ARCHIVE_CONFIG))
    assert (config["batchSize"], config["maxBatchDelay"]) == (8, 2)
    record = Manifest(root, "simple_nn").records["tune"]
    assert record.details["server"] == "ray" and record.details["chosen"]["server"] == "ray"
    md = (root / "reports" / "simple_nn" / "tune-ray.md").read_text()
    assert "one local Ray Serve cluster" in md and report["serve_command"] in md
    left = [p.info["cmdline"] for p in psutil.process_iter(["cmdline"]) if "/pipeline-ray-" in " ".join(p.info["cmdline"] or ())]
    assert left == []
