"""The in-process sweep sized to the model, and OpenVINO held to parity before its times count."""

from __future__ import annotations

import time

import pytest

from pipeline.artifacts.cost import MIN_SWEEP
from pipeline.bench import engines
from pipeline.bench import latency as bench
from pipeline.bench.sweep import CallBudget, Cost, Deadline, Sweep, expected_seconds, per_round, warm_calls
from tests.bench.test_bench import tiny
from tests.helpers import copy_root

BUDGET = CallBudget(budget_s=0.5, rounds=5, warmup_s=0.2, max_iterations=200_000)


def test_calls_are_sized_to_the_budget_and_a_slow_call_warms_up_less():
    assert per_round(1e-5, BUDGET) * BUDGET.rounds == pytest.approx(0.5 / 1e-5, rel=1e-3)
    assert per_round(2.0, BUDGET) == 1  # a 2 s call: one per round, not 3x the budget
    assert warm_calls(1e-5, BUDGET) == 10 and warm_calls(2.0, BUDGET) == 2
    # Warm-up and rounds: a 2 s call costs its first calls, two warm calls and five timed ones.
    assert expected_seconds(2.0, BUDGET) == pytest.approx((3 + 2 + 5) * 2.0)
    assert expected_seconds(1e-5, BUDGET) == pytest.approx(0.2 + 0.5, rel=0.01)


def test_parity_and_the_benchmark_size_their_sweeps_by_one_rule():
    """The same measured cost leaves out the same batch sizes, for the same reason, in both sweeps."""
    from pipeline.artifacts.cost import Cost as Measured
    from pipeline.artifacts.cost import Sizing
    from pipeline.stages.parity import Case, why_not

    sizing = Sizing(seconds=60.0, memory_mb=1000.0)
    bench_sweep = Sweep("sized", [1, 8, 64, 512], seconds=60.0, memory_mb=1000.0)
    at_8 = Cost(batch=8, per_call_s=0.3, overhead_s=0.0, extra_mb=100.0)
    measured = {8: Measured(seconds=0.3, extra_mb=100.0)}
    for batch, fits in ((MIN_SWEEP, True), (64, True), (512, False)):
        parity_reason = why_not(sizing, Case(f"random b={batch}", batch, dict), measured, runs=1, spent_s=0.0)
        assert (parity_reason is None) == fits == bench_sweep.batch_fits("cpu", batch, at_8), batch
    assert parity_reason is not None and parity_reason.startswith("would take about 6400 MiB, over the 1000 MiB budget")
    assert bench_sweep.skipped[-1]["reason"].startswith("would take about 6400 MiB, over the 1000 MiB budget")
    # A declared case (edge values, a sample text) is not a batch size: it always runs.
    assert why_not(Sizing(seconds=0.0, memory_mb=0.0), Case("edge values", None, dict), measured, 3, 0.0) is None


def test_a_batch_past_the_minimum_runs_only_where_its_scaled_cost_fits():
    sweep = Sweep("sized", [1, 8, 64, 512], seconds=60.0, memory_mb=1000.0, spent_s=20.0)
    slow = Cost(batch=8, per_call_s=0.3, overhead_s=0.0, extra_mb=100.0)
    assert sweep.engine_fits("cpu", MIN_SWEEP, "eager", slow, BUDGET)  # up to MIN_SWEEP, whatever it costs
    sweep.finish_batch("cpu", MIN_SWEEP, ["eager"], 0.0)
    # At 64 rows one call takes about 2.4 s: 10 calls are 24 s, which fits the 40 s left, and is set aside.
    assert sweep.engine_fits("cpu", 64, "eager", slow, BUDGET)
    assert not sweep.engine_fits("cpu", 64, "torchscript", slow, BUDGET)  # 24 s more would not fit the 16 s still free
    assert not sweep.engine_fits("cpu", 512, "eager", slow, BUDGET)
    compiled = Cost(batch=8, per_call_s=0.01, overhead_s=70.0)  # compiling again at each batch size
    assert not sweep.engine_fits("cpu", 64, "torch.compile", compiled, BUDGET)
    assert sweep.batch_fits("cpu", 64, slow) and not sweep.batch_fits("cpu", 512, slow)  # 6.4 GiB over 1000 MiB
    reasons = {(s["batch"], s["engine"]): s["reason"] for s in sweep.skipped}
    assert set(reasons) == {(64, "torchscript"), (512, "eager"), (64, "torch.compile"), (512, None)}
    assert "16 s left of the 60 s budget" in reasons[(512, "eager")] and "at batch 8" in reasons[(512, "eager")]
    assert "setup 70 s" in reasons[(64, "torch.compile")]
    assert "6400 MiB, over the 1000 MiB budget" in reasons[(512, None)]
    sweep.finish_batch("cpu", 64, ["eager"], 30.0)
    assert sweep.spent_s == 50.0 and sweep.reserved_s == 0.0 and "reserved_s" not in sweep.to_json()
    full = Sweep("full", [1, 8, 64, 512], seconds=0.0, memory_mb=0.0, spent_s=20.0)
    assert full.engine_fits("cpu", 512, "eager", slow, BUDGET) and full.batch_fits("cpu", 512, slow) and not full.skipped


def test_the_time_limit_bounds_even_the_batch_sizes_that_always_run():
    near = Sweep("sized", [1, 8, 64], seconds=600.0, memory_mb=1000.0, deadline=Deadline(100.0, time.perf_counter() - 90.0))
    compiled = Cost(batch=1, per_call_s=0.001, overhead_s=30.0)  # compiling again at the next shape
    quick = Cost(batch=1, per_call_s=0.001, overhead_s=0.0)
    assert near.batch_fits("cuda", MIN_SWEEP, quick)
    assert not near.engine_fits("cuda", MIN_SWEEP, "torch.compile-max-autotune", compiled, BUDGET)  # 30 s, 10 left
    assert near.engine_fits("cuda", MIN_SWEEP, "onnxruntime", quick, BUDGET)
    assert near.may_start("cuda", MIN_SWEEP, "onnxruntime")
    (left_out,) = near.skipped
    assert left_out["engine"] == "torch.compile-max-autotune" and "left of the --time-limit of 100 s" in left_out["reason"]
    assert "setup 30 s" in left_out["reason"] and near.to_json()["time_limit_s"] == 100.0
    over = Sweep("sized", [1, 8], seconds=600.0, memory_mb=1000.0, deadline=Deadline(100.0, time.perf_counter() - 101.0))
    assert not over.batch_fits("cpu", 1, None) and not over.may_start("cpu", 1, "eager")
    assert [s["reason"] for s in over.skipped] == ["the --time-limit of 100 s was reached"] * 2
    free = Sweep("sized", [1, 8], seconds=600.0, memory_mb=1000.0)
    assert free.engine_fits("cpu", MIN_SWEEP, "torch.compile", Cost(1, 0.001, 1e6), BUDGET) and free.to_json()["time_limit_s"] is None


@pytest.fixture
def copied(built_root, tmp_path):
    copy_root(built_root, tmp_path)
    return tmp_path


def test_the_report_says_which_sweep_ran_and_what_it_left_out(copied):
    settings = tiny(copied, engines=("eager", "onnxruntime"), batch_sizes=(1, 8, 64, 4096), cold_start=False, served="off")
    result = bench.run(bench.replace(settings, sweep_budget_s=0.01))
    sweep = result["sweep"]
    assert sweep["mode"] == "sized" and sweep["asked"] == [1, 8, 64, 4096]
    assert [r["batch"] for r in sweep["ran"]] == [1, 8]  # the budget was spent by then
    assert {(s["batch"], s["engine"]) for s in sweep["skipped"]} >= {(64, "eager"), (64, "onnxruntime")}
    assert {r["batch"] for r in result["in_process"]} == {1, 8}
    assert result["peak_memory_mb"] > 0
    md = (copied / "reports" / "simple_nn" / "latency.md").read_text()
    assert "## Batch sizes" in md and "- left out: cpu batch 64 for eager: would take about" in md
    full = bench.run(bench.replace(settings, sweep="full", sweep_budget_s=0.01))
    assert {r["batch"] for r in full["in_process"]} == {1, 8, 64, 4096} and full["sweep"]["skipped"] == []


def test_a_time_limit_already_reached_starts_nothing_and_the_report_says_so(copied):
    settings = tiny(copied, engines=("eager", "onnxruntime"), served="auto", time_limit_s=1e-6)
    result = bench.run(settings)
    assert result["in_process"] == [] and result["served"] is None
    assert result["served_left_out"] == "the --time-limit of 0 s was reached"
    assert {(s["batch"], s["engine"]) for s in result["sweep"]["skipped"]} == {(1, None), (8, None)}
    assert {c["engine"]: c["left_out"] for c in result["cold_start"]} == {
        e: "the --time-limit of 0 s was reached" for e in ("eager", "onnxruntime")
    }
    md = (copied / "reports" / "simple_nn" / "latency.md").read_text()
    assert "`--time-limit` of 0 s" in md and "| eager | cpu | not run: the --time-limit of 0 s was reached |" in md
    assert "## Served\n\nNot run: the --time-limit of 0 s was reached." in md
    assert not (copied / "run").exists()  # no server was started


@pytest.mark.skipif(engines.skip_reason("openvino", "cpu") is not None, reason="openvino is not installed")
def test_openvino_runs_on_the_same_onnx_and_is_held_to_parity(copied):
    result = bench.run(tiny(copied, engines=("eager", "onnxruntime", "openvino"), batch_sizes=(1, 8), cold_start=False, served="off"))
    assert result["failures"] == []
    ran = {(r["engine"], r["batch"]): r for r in result["in_process"]}
    assert {("openvino", 1), ("openvino", 8), ("floor:openvino", 1)} <= set(ran)
    assert ran[("openvino", 1)]["provider"].startswith("OpenVINO") and ran[("openvino", 1)]["ratio_to_floor_p50"] > 0
    checks = result["held_to_parity"]
    assert [(c["engine"], c["batch"], c["passed"]) for c in checks] == [("openvino", 1, True), ("openvino", 8, True)]
    assert {v["batch"]: v["fastest"] for v in result["verdicts"]}.keys() == {1, 8}
    assert all(v["fastest_vs_best_pytorch"] > 0 for v in result["verdicts"])


@pytest.mark.skipif(engines.skip_reason("openvino", "cpu") is not None, reason="openvino is not installed")
def test_an_engine_whose_answers_differ_is_not_timed(copied, monkeypatch):
    real = engines.openvino_engine

    def drifting(name, path, threads):
        engine = real(name, path, threads)
        if engine.answer is not None:
            answer = engine.answer
            engine.answer = lambda feed: {k: v + 1.0 for k, v in answer(feed).items()}
        return engine

    monkeypatch.setattr(engines, "openvino_engine", drifting)
    result = bench.run(tiny(copied, engines=("eager", "openvino"), batch_sizes=(1,), cold_start=False, served="off"))
    assert ("openvino", 1) not in {(r["engine"], r["batch"]) for r in result["in_process"]}
    (failure,) = result["failures"]
    assert failure["engine"] == "openvino" and "answers differ from eager beyond the model's tolerance" in failure["error"]
    assert result["held_to_parity"][0]["passed"] is False


def test_openvino_missing_is_a_skip_that_says_how_to_install_it(monkeypatch):
    real = engines.importlib.util.find_spec
    monkeypatch.setattr(engines.importlib.util, "find_spec", lambda name: None if name == "openvino" else real(name))
    assert engines.skip_reason("openvino", "cpu") == "the openvino package is not installed: pip install 'pipeline[bench]'"
    assert engines.skip_reason("floor:openvino", "cpu") is not None
    assert engines.skip_reason("openvino", "cuda") == "OpenVINO is benched on the CPU"
