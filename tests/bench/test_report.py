"""The benchmark's report read at a glance: ratios in words, times in their unit, eager's time shown, the fastest
engine named once and first, floors apart, and a plot that renders (issue 39, point 4)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest

from pipeline.bench import latency as bench
from pipeline.bench import report

# At batch 4096 OpenVINO beats every engine while TorchScript beats ONNX Runtime: the case where "fastest of all" and
# "winner" once disagreed.
TIMES_MS = {
    1: {
        "eager": 0.0152,
        "torchscript": 0.0099,
        "onnxruntime": 0.0031,
        "openvino": 0.0120,
        "floor:eager": 0.0046,
        "floor:onnxruntime": 0.0024,
    },
    4096: {"eager": 8.4, "torchscript": 1.2, "onnxruntime": 2.5, "openvino": 0.9, "floor:eager": 0.0046, "floor:onnxruntime": 0.0024},
}


def record(engine: str, batch: int, p50: float) -> dict:
    return {
        "engine": engine,
        "device": "cpu",
        "provider": "CPUExecutionProvider",
        "batch": batch,
        "iterations": 2000,
        **{k: p50 for k in ("p50_ms", "p90_ms", "p99_ms", "p999_ms", "mean_ms", "min_ms", "max_ms")},
        "std_ms": 0.0,
        "throughput_per_s": batch / p50 * 1e3,
        "setup_s": 0.0,
    }


def fixed_report() -> dict:
    records = [record(e, b, ms) for b, row in TIMES_MS.items() for e, ms in row.items()]
    for r in records:  # as the benchmark relates them: against eager and the engine's floor in the same run
        row, floor = TIMES_MS[r["batch"]], f"floor:{r['engine']}"
        r["speedup_vs_eager_p50"] = None if r["engine"].startswith("floor:") else row["eager"] / r["p50_ms"]
        r["ratio_to_floor_p50"] = r["p50_ms"] / row[floor] if floor in row else None
    return {
        "model": "simple_nn",
        "created": "2026-12-06T00:00:00+00:00",
        "seconds": 12.0,
        "settings": {"warmup_s": 0.2, "budget_s": 0.5, "rounds": 5},
        "environment": {
            **dict.fromkeys(("cpu", "physical_cores", "logical_cores", "memory_gib", "intra_op_threads", "python"), 1),
            **dict.fromkeys(("torch", "onnx", "onnxruntime", "torchserve", "platform"), "x"),
        },
        "in_process": records,
        "verdicts": bench.verdicts(records),
        "failures": [],
        "skipped": [],
        "cold_start": [],
        "engines": {},
    }


@dataclass(frozen=True)
class Settings:
    batch_sizes: tuple[int, ...] = (1, 4096)
    root: Path = Path("/r")

    def report_stem(self) -> str:
        return "latency"


@pytest.mark.parametrize(
    ("ms", "text"),
    [(0.0099, "9.9 µs"), (0.000512, "0.512 µs"), (0.2501, "250 µs"), (1.53, "1.53 ms"), (8.4, "8.4 ms"), (2100.0, "2.1 s"), (None, "—")],
)
def test_times_are_printed_in_the_unit_that_fits(ms, text):
    assert report.human_time(ms) == text


@pytest.mark.parametrize(
    ("speedup", "text"),
    [(1.53, "1.53× faster than eager"), (0.5, "2.00× slower than eager"), (1.001, "as fast as eager"), (None, "—")],
)
def test_ratios_say_faster_or_slower_in_words(speedup, text):
    assert report.versus(speedup, "eager") == text


def test_the_report_opens_with_the_fastest_engine_per_batch_and_eagers_time():
    md = report.markdown(fixed_report())
    first = md.index("## ")
    assert md[first:].startswith("## The fastest fp32 engine")
    assert md.index("## The fastest fp32 engine") < md.index("## Environment")
    table = md[first : md.index("## Environment")]
    assert "| cpu | 1 | **onnxruntime** | 3.1 µs | 15.2 µs | 4.90× faster than eager |" in table
    assert "| cpu | 4096 | **openvino** | 900 µs | 8.4 ms | 9.33× faster than eager |" in table


def test_fastest_and_winner_never_disagree():
    """One computation names the fastest engine; the ONNX Runtime against PyTorch table names no rival "fastest" or "winner"."""
    rep = fixed_report()
    assert {w["batch"]: w["best"]["engine"] for w in report.winners(rep["in_process"])} == {1: "onnxruntime", 4096: "openvino"}
    fp32 = {v["batch"]: v["fastest"] for v in rep["verdicts"] if v["precision"] == "fp32"}
    assert fp32 == {1: "onnxruntime", 4096: "openvino"}  # the JSON's verdicts name the same engines
    md = report.markdown(rep)
    assert "fastest of all" not in md and "| winner |" not in md
    assert "PyTorch (torchscript), 2.08× faster than onnxruntime" in md
    summary = report.console_summary(rep, Settings())
    assert "fastest, cpu batch 4096: openvino 900 µs, 9.33× faster than eager (8.4 ms)" in summary


def test_floors_have_their_own_table():
    md = report.markdown(fixed_report())
    floors = md.index("floors (an identity model through the same API)")
    assert "| floor:" not in md[:floors]  # no floor row among the engines
    assert "| eager | 4.6 µs | 4.6 µs |" in md[floors:]
    assert "| onnxruntime | 2.4 µs | 2.4 µs |" in md[floors:]


def test_the_console_shows_eagers_time_and_says_faster_or_slower():
    summary = report.console_summary(fixed_report(), Settings())
    assert "cpu batch 1: eager                  p50 15.2 µs (the baseline)" in summary
    assert "torchscript            p50 9.9 µs, 1.54× faster than eager" in summary
    assert "onnxruntime            p50 3.1 µs, 4.90× faster than eager, 1.29× its floor's time" in summary
    assert "openvino               p50 12 µs, 1.27× faster than eager" in summary
    assert " ms, " not in summary and "× eager" not in summary
    assert "floor:" not in summary


def test_plot_renders_a_png(tmp_path):
    path = tmp_path / "latency.png"
    report.plot(fixed_report(), path)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    colours = report.engine_colours(fixed_report()["in_process"])
    assert colours["eager"] not in {colours["floor:eager"], colours["floor:onnxruntime"]}
    assert len({str(colours[e]) for e in ("eager", "torchscript", "onnxruntime", "openvino")}) == 4


def test_plot_without_eager_draws_its_empty_speedup_panel_on_linear_axes(tmp_path):
    """--engines onnxruntime measures no eager: no engine has a speedup, and a log axis with nothing on it
    made matplotlib raise ("Data cannot be log-scaled") instead of writing the plot."""
    without = fixed_report()
    without["in_process"] = [{**r, "speedup_vs_eager_p50": None} for r in without["in_process"] if r["engine"] != "eager"]
    path = tmp_path / "latency.png"
    report.plot(without, path)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
