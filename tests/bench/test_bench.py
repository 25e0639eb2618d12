"""The latency benchmark on a tiny budget: report schema and sanity, never a wall-clock threshold."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
import time
from dataclasses import asdict

import pytest

from pipeline.bench import engines
from pipeline.bench import latency as bench
from pipeline.bench import served as bench_served
from pipeline.bench.engines import CUDA_GRAPH_ENGINES, FLOOR_OF
from pipeline.errors import PipelineError
from pipeline.runtimes.runners import cuda_available
from tests.helpers import REPO, archive_handler, copy_root, interleaved_p50_us

ENGINES = ("eager", "torchscript", "onnxruntime", "onnxruntime-run")
BATCHES = (1, 8)
CONCURRENCY = (1, 4)
PCTS = ("min_ms", "p50_ms", "p90_ms", "p99_ms", "p999_ms", "max_ms")


def tiny(root, **kw) -> bench.BenchSettings:
    base = dict(
        root=root, engines=ENGINES, batch_sizes=BATCHES, budget_s=0.05, rounds=2, warmup_s=0.02, concurrency=CONCURRENCY, served_seconds=1.0
    )
    return bench.BenchSettings(**{**base, **kw})


@pytest.fixture(scope="module")
def report(tmp_path_factory, built_root):
    """One tiny but complete run: in process, cold start, and the served sweep on real TorchServe."""
    root = tmp_path_factory.mktemp("bench")
    copy_root(built_root, root)
    result = bench.run(tiny(root))
    return root, result


@pytest.mark.slow
def test_writes_three_reports(report):
    root, result = report
    folder = root / "reports" / "simple_nn"
    assert json.loads((folder / "latency.json").read_text()) == json.loads(json.dumps(result))
    assert (folder / "latency.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    md = (folder / "latency.md").read_text()
    for heading in (
        "## Environment",
        "speedup over eager",
        "## Cold start",
        "## Served",
        "tuned vs default",
        "tuned-large-batch vs tuned",
    ):
        assert heading in md


@pytest.mark.slow
def test_every_engine_and_batch_present_with_ordered_positive_percentiles(report):
    _, result = report
    records = result["in_process"]
    wanted = set(ENGINES) | {FLOOR_OF[e] for e in ENGINES}
    assert {(r["engine"], r["batch"]) for r in records} == {(e, b) for e in wanted for b in BATCHES}
    assert result["failures"] == []
    for r in records:
        values = [r[k] for k in PCTS]
        assert all(v > 0 for v in values), r
        assert values == sorted(values), r
        assert r["iterations"] >= 2 * 10  # at least 10 calls per round
        assert r["throughput_per_s"] == pytest.approx(r["batch"] / r["mean_ms"] * 1e3)
        assert r["device"] == "cpu"


@pytest.mark.slow
def test_ratios_are_computed_against_the_same_run(report):
    _, result = report
    index = {(r["engine"], r["batch"]): r for r in result["in_process"]}
    for b in BATCHES:
        assert index[("eager", b)]["speedup_vs_eager_p50"] == 1.0
        ort, eager, floor = index[("onnxruntime", b)], index[("eager", b)], index[("floor:onnxruntime", b)]
        assert ort["speedup_vs_eager_p50"] == pytest.approx(eager["p50_ms"] / ort["p50_ms"])
        assert ort["ratio_to_floor_p50"] == pytest.approx(ort["p50_ms"] / floor["p50_ms"])
        assert index[("floor:eager", b)]["speedup_vs_eager_p50"] is None
    # A report states facts, not goals: no targets section (goals live in docs and tests).
    assert "targets" not in result


@pytest.mark.slow
def test_labels_say_what_really_ran(report):
    _, result = report
    providers = {r["engine"]: r["provider"] for r in result["in_process"]}
    assert providers["onnxruntime"] == providers["onnxruntime-run"] == "CPUExecutionProvider"
    assert providers["eager"] == "torch cpu"
    env = result["environment"]
    assert env["intra_op_threads"] == result["settings"]["threads"] == env["torch_threads"]
    for key in ("cpu", "physical_cores", "torch", "onnx", "onnxruntime", "torchserve"):
        assert env[key]
    if not cuda_available():
        assert env["gpu"] is None
        assert not any("cuda" in r["device"] or "CUDA" in r["provider"] for r in result["in_process"])


@pytest.mark.slow
def test_cold_start_per_engine(report):
    _, result = report
    cold = {c["engine"]: c for c in result["cold_start"]}
    assert set(cold) == {"eager", "torchscript", "onnxruntime"}
    for c in cold.values():
        assert "error" not in c, c
        assert c["first_inference_s"] > 0 and c["load_s"] > 0
        assert c["total_s"] == pytest.approx(c["import_s"] + c["load_s"] + c["first_inference_s"])
    # The cold session is made by the same factory with the options the in-process engines ran with.
    assert cold["onnxruntime"]["session"] == asdict(bench.BenchSettings(threads=1).session("cpu")) | {
        "threads": result["settings"]["threads"]
    }
    assert result["environment"]["onnxruntime_sessions"] == result["sessions"]


@pytest.mark.slow
def test_served_sweep_on_real_torchserve(report):
    _, result = report
    served = result["served"]
    assert [c["name"] for c in served["configs"]] == list(bench_served.SERVING_CONFIGS)
    for config in served["configs"]:
        assert [r["concurrency"] for r in config["runs"]] == list(CONCURRENCY)
        for run, ping in zip(config["runs"], config["ping"]):
            assert run["requests"] > 0 and run["errors"] == 0, run
            assert run["status"] == {"200": run["requests"]}
            assert 0 < run["p50_ms"] <= run["p99_ms"]
            assert ping["errors"] == 0 and ping["p50_ms"] > 0
            metrics = run["torchserve_metrics"]
            # TorchServe logged one queue and one total time per request the client sent.
            assert metrics["frontend_total"]["n"] >= run["requests"] * 0.9
            assert 0 <= metrics["queue"]["mean_ms"] <= metrics["frontend_total"]["mean_ms"]
            assert metrics["handler_per_batch"]["n"] > 0
    sources = {c["name"]: c["runs"][0]["torchserve_metrics"]["source"] for c in served["configs"]}
    assert sources["default"].startswith("metrics logs") and sources["tuned"].startswith("metrics API")
    changes = {c["name"]: c["changes"] for c in served["configs"]}
    assert changes["tuned"] == {"archive": {}, "server": {}}  # exactly what the project ships
    sc = {c["name"]: c["server_config"] for c in served["configs"]}
    assert sc["default"]["batchSize"] == 1 and sc["tuned"]["batchSize"] == 8 and sc["tuned-large-batch"]["batchSize"] == 32
    assert [(c["base"], c["other"]) for c in served["comparisons"]] == list(bench_served.COMPARISONS)


@pytest.mark.slow
def test_served_load_generator_handler_and_profile_are_reported(report):
    """Which load generator ran and what it cost, the handler timed alone, and where a request's time went."""
    from pipeline.bench.loadgen import wrk_available

    root, result = report
    served = result["served"]
    runs = [r for c in served["configs"] for r in [*c["runs"], *c["ping"]]]
    assert {r["generator"] for r in runs} == {"wrk" if wrk_available() else "locust"}
    assert all(0 < r["generator_cpu_share"] < 1 for r in runs)
    per_request = served["handler"]["us_per_request"]
    assert set(per_request) == {"1", "8"} and all(v > 0 for v in per_request.values())
    rows = served["profile"]
    assert [r["concurrency"] for r in rows] == list(CONCURRENCY)
    parts = ("client_to_frontend_and_back_ms", "queue_ms", "rest_ms", "handler_ms")
    for r in rows:
        assert all(r[p] >= 0 for p in parts)
        assert sum(r[p] for p in parts) >= r["client_mean_ms"] * 0.99  # the parts account for the whole mean
    tuned = next(c for c in served["configs"] if c["name"] == "tuned")
    assert tuned["runs"][0]["concurrency"] == 1 and tuned["runs"][0]["p50_ms"] > 0  # the shipped config at one client
    md = (root / "reports" / "simple_nn" / "latency.md").read_text()
    assert "Verdict per concurrency:" in md and "- **1 client**:" in md and "- **4 clients**:" in md
    assert "### Where a request's time goes (tuned)" in md


def test_handler_is_timed_on_its_own(built_root, tmp_path, measure):
    from pipeline.bench import handler_time

    mar = built_root / "model_store" / "simple_nn.mar"
    timed = handler_time.measure_in_child(mar, b'{"x": 5.0}')
    assert set(timed["us_per_request"]) == {"1", "8"} and "preprocess_us_per_request" not in timed
    assert all(v > 0 for v in timed["us_per_request"].values())
    # A batch costs less per request than requests one by one: compared on the two timed in turn, call by call,
    # since two medians measured one after the other carry the machine's drift between them.
    module, ctx = archive_handler(mar, tmp_path / "model_dir")
    p50 = interleaved_p50_us(
        {str(n): lambda n=n: module.handle([{"body": b'{"x": 5.0}'} for _ in range(n)], ctx) for n in (1, 8)}, rounds=500
    )
    line = measure(f"simple_nn's handler {p50['1']:.0f} µs at batch 1, {p50['8'] / 8:.0f} µs per request at batch 8 (interleaved p50)")
    assert p50["8"] / 8 < p50["1"], line


@pytest.mark.slow
def test_served_servers_are_gone_and_user_archive_untouched(report, built_root):
    root, _ = report
    assert not (root / "run").exists() or not any((root / "run").rglob("server.json"))
    names = {p.name for p in (root / "model_store").glob("*.mar")}
    assert names == {"simple_nn.mar"}
    assert (root / "model_store" / "simple_nn.mar").read_bytes() == (built_root / "model_store" / "simple_nn.mar").read_bytes()


def test_engine_that_cannot_run_is_reported_not_fatal(built_root, tmp_path, monkeypatch):
    from pipeline.errors import PipelineError

    def broken(path, config):
        raise PipelineError("runtime", "the CUDA provider failed to load", "check the libraries")

    copy_root(built_root, tmp_path)
    monkeypatch.setattr(engines, "create_session", broken)
    result = bench.run(tiny(tmp_path, engines=("eager", "onnxruntime"), batch_sizes=(1,), cold_start=False, served="off"))
    assert sorted(f["engine"] for f in result["failures"]) == ["floor:onnxruntime", "onnxruntime"]
    assert "failed to load" in result["failures"][0]["error"]
    assert {r["engine"] for r in result["in_process"]} == {"eager", "floor:eager"}
    assert "could not run here" in (tmp_path / "reports" / "simple_nn" / "latency.md").read_text()


def test_impossible_engine_and_device_pairs_are_skipped_not_failed(built_root, tmp_path):
    copy_root(built_root, tmp_path)
    result = bench.run(tiny(tmp_path, engines=("eager", *CUDA_GRAPH_ENGINES), batch_sizes=(1,), cold_start=False, served="off"))
    assert result["failures"] == []
    assert {(s["engine"], s["device"]) for s in result["skipped"]} == {(e, "cpu") for e in CUDA_GRAPH_ENGINES}
    assert all(s["reason"] == "CUDA graphs exist only on CUDA" for s in result["skipped"])
    assert {r["engine"] for r in result["in_process"]} == {"eager", "floor:eager"}
    assert "Skipped pairings" in (tmp_path / "reports" / "simple_nn" / "latency.md").read_text()


@pytest.mark.parametrize("engine", CUDA_GRAPH_ENGINES)
def test_cuda_graph_engines_refuse_the_cpu_in_load(engine):
    assert engines.skip_reason(engine, "cpu") == "CUDA graphs exist only on CUDA"
    assert engines.skip_reason(engine, "cuda") is None
    assert engines.skip_reason("onnxruntime-run", "cuda") is None


def test_cuda_graph_flag_adds_onnxruntime_graphs_and_both_pytorch_peers(tmp_path):
    from pipeline import cli

    p, commands = cli.parser()
    args = p.parse_args(["bench", "--device", "cpu", "--cuda-graph", "--cuda-precision", "tf32", "--cudnn-search", "HEURISTIC"])
    from pipeline.cli.bench import settings_from_args

    settings = settings_from_args(args)
    assert set(CUDA_GRAPH_ENGINES) <= set(settings.engines)
    config = settings.session("cuda")
    assert config.cuda_options()["use_tf32"] == "1" and config.cuda_options()["cudnn_conv_algo_search"] == "HEURISTIC"
    assert settings.session("cpu").describe() == {"device": "cpu", "threads": settings.threads}


def test_verdicts_name_the_faster_runtime_and_by_how_much():
    records = [
        {"device": "cuda", "batch": 1, "engine": e, "p50_ms": ms}
        for e, ms in (("eager", 0.414), ("onnxruntime", 0.107), ("onnxruntime-cudagraph", 0.044), ("torch-cudagraph", 0.036))
    ]
    [verdict] = bench.verdicts(records)
    assert verdict["winner"] == "PyTorch" and verdict["winner_engine"] == "torch-cudagraph"
    assert verdict["onnxruntime"] == "onnxruntime-cudagraph"
    assert verdict["by"] == pytest.approx(0.044 / 0.036)


@pytest.mark.skipif(cuda_available(), reason="checks the guard on a machine without CUDA")
def test_cuda_request_without_cuda_is_a_clear_error(built_root, tmp_path):
    copy_root(built_root, tmp_path)
    proc = subprocess.run(
        [sys.executable, "-m", "pipeline", "bench", "--device", "cuda", "--root", str(tmp_path)],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=120,
    )
    assert proc.returncode == 1
    assert "no CUDA device" in proc.stderr and "never labelled CUDA" in proc.stderr
    assert not (tmp_path / "reports" / "simple_nn" / "latency.json").exists()


@pytest.mark.parametrize(
    "args, message",
    [
        (["--engines", "eager,tensorrt"], "choose from"),
        (["--batch-sizes", "0,8"], "positive"),
        (["--concurrency", "x"], "invalid"),
    ],
)
def test_bad_options_exit_2_with_the_choices(args, message, tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "pipeline", "bench", "--root", str(tmp_path), *args], capture_output=True, text=True, cwd=REPO, timeout=120
    )
    assert proc.returncode == 2
    assert message in proc.stderr


def test_missing_artifacts_say_run_export_first(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "pipeline", "bench", "--root", str(tmp_path), "--served", "off"],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=120,
    )
    assert proc.returncode == 1
    assert "python -m pipeline all" in proc.stderr


def test_served_running_without_a_server_is_a_clear_error(built_root, tmp_path):
    copy_root(built_root, tmp_path)
    with pytest.raises(bench.PipelineError, match="no simple_nn server is running"):
        bench.run(tiny(tmp_path, engines=("eager",), batch_sizes=(1,), cold_start=False, served="running"))


def _runs(rps: list[float], p99: list[float], errors: int = 0) -> list[dict]:
    return [{"concurrency": c, "requests_per_s": r, "p99_ms": p, "errors": errors} for c, r, p in zip((1, 16), rps, p99)]


def test_compare_states_throughput_p99_errors_and_who_served_more():
    configs = [{"name": "default", "runs": _runs([100, 500], [10, 50])}, {"name": "tuned", "runs": _runs([90, 1100], [12, 40])}]
    c = bench_served.compare(configs, "default", "tuned")
    assert c["concurrency"] == 16 and c["rps_ratio"] == pytest.approx(2.2) and (c["p99_base_ms"], c["p99_other_ms"]) == (50, 40)
    assert c["errors"] == 0 and "met" not in c and "goal" not in c  # a report states facts; goals are the reader's
    assert c["per_concurrency"]["1"]["winner_rps"] == "default" and c["per_concurrency"]["1"]["p99_ratio"] == pytest.approx(1.2)
    assert c["per_concurrency"]["16"]["winner_rps"] == "tuned"
    configs[1]["runs"] = _runs([90, 1100], [12, 40], errors=1)
    assert bench_served.compare(configs, "default", "tuned")["errors"] == 1  # both sides counted: 0 + 1
    assert bench_served.compare(configs, "default", "absent") is None


def test_log_window_reads_only_new_metrics(tmp_path):
    log = tmp_path / "ts_metrics.log"
    log.write_text("x - ts_queue_latency_microseconds.Microseconds:9000.0|#model\n")
    window = bench_served.LogWindow.mark(tmp_path)
    with open(log, "a") as f:
        f.write("x - ts_inference_latency_microseconds.Microseconds:3000.0|#m\nx - ts_queue_latency_microseconds.Microseconds:1000.0|#m\n")
    (tmp_path / "model_metrics.log").write_text("x - PredictionTime.ms:0.5|#m\n")
    b = window.breakdown()
    assert b["queue"]["n"] == 1 and b["queue"]["p50_ms"] == pytest.approx(1.0)
    assert b["frontend_total"]["p50_ms"] == pytest.approx(3.0)
    assert b["queue_share_of_total"] == pytest.approx(1 / 3)


def test_load_goes_to_loopback_only():
    from pipeline.bench.loadgen import run_load

    with pytest.raises(PipelineError, match="only 127.0.0.1"):
        run_load("http://10.0.0.1:8080/ping", [], 1, 1.0)


@pytest.fixture
def two_servers():
    """Two HTTP servers on loopback that count the POSTs each one answered; each answers after a random pause of up
    to its entry in `pauses` (seconds, 0 at first)."""
    import random
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    servers, counts, pauses = [], [], [0.0, 0.0]
    for i in range(2):
        counts.append(0)

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            index = i

            def do_POST(self):
                self.rfile.read(int(self.headers.get("content-length", 0)))
                time.sleep(random.uniform(0, pauses[self.index]))
                counts[self.index] += 1
                self.send_response(200)
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"{}")

            def log_message(self, *args):
                pass

        server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        servers.append(server)
    yield [f"http://127.0.0.1:{s.server_address[1]}/predictions/m" for s in servers], counts, pauses
    for server in servers:
        server.shutdown()
        server.server_close()


@pytest.mark.parametrize("generator", ["wrk", "locust"])
def test_load_spread_over_addresses_reaches_each_of_them(two_servers, generator):
    """Ray's replicas each at an address of their own: the load reaches both, and the summary counts both."""
    from pipeline.bench.loadgen import measure, wrk_available

    if generator == "wrk" and not wrk_available():
        pytest.skip("wrk is not installed")
    (first, second), counts, _ = two_servers
    result = measure(first, "{}", 4, 1.0, generator=generator, spread=[second])
    assert counts[0] > 0 and counts[1] > 0, counts
    assert result["errors"] == 0 and result["requests"] <= sum(counts) <= result["requests"] + 8  # + what was in flight at the end
    with pytest.raises(PipelineError, match="only 127.0.0.1"):
        measure(first, "{}", 4, 1.0, generator=generator, spread=["http://10.0.0.1:8080/predictions/m"])


def test_a_request_limit_ends_the_run_when_it_is_reached(two_servers):
    """The soak's 20,000 requests were sent in 15 s, then the run waited out its time limit (reported: 133/s).
    Locust's quit, called by the user that sent the last request, killed that user before it had stopped the run.
    With answers that take 0 to 0.4 s, that happened in two runs of three."""
    from pipeline.bench.loadgen import run_load

    (url, _), counts, pauses = two_servers
    pauses[0] = 0.4
    for _ in range(3):
        result = run_load(url, ["{}"], 16, 30.0, max_requests=20)
        assert result.requests >= 20 and result.errors == 0, result.status_counts()
        assert result.seconds < 10, f"20 requests took {result.seconds:.1f} s: the run ended at its time limit, not its request limit"


@pytest.mark.cuda
@pytest.mark.skipif(not cuda_available(), reason="needs a CUDA GPU")
def test_cuda_engines_run_on_the_gpu(built_root, tmp_path):
    copy_root(built_root, tmp_path)
    result = bench.run(
        tiny(
            tmp_path,
            engines=("eager", "onnxruntime", "onnxruntime-run", *CUDA_GRAPH_ENGINES),
            batch_sizes=(1, 64),
            devices=("cpu", "cuda"),
            cold_start=False,
            served="off",
        )
    )
    assert result["failures"] == []
    assert {(s["engine"], s["device"]) for s in result["skipped"]} == {(e, "cpu") for e in CUDA_GRAPH_ENGINES}
    cuda = {(r["engine"], r["batch"]): r for r in result["in_process"] if r["device"] == "cuda"}
    assert cuda[("onnxruntime", 1)]["provider"] == "CUDAExecutionProvider"
    assert cuda[("eager", 1)]["provider"].startswith("torch cuda")
    assert "CUDA graphs" in cuda[("onnxruntime-cudagraph", 64)]["provider"]
    assert "CUDAGraph replay" in cuda[("torch-cudagraph", 64)]["provider"]
    assert ("torch.compile-cudagraphs", 1) in cuda and cuda[("onnxruntime-run", 1)]["provider"] == "CUDAExecutionProvider"
    assert result["sessions"]["cuda"]["provider_options"]["use_tf32"] == "0"
    assert {v["device"] for v in result["verdicts"]} == {"cpu", "cuda"}
    assert result["environment"]["gpu"]


def test_compare_falls_back_to_the_largest_concurrency_run():
    configs = [{"name": "tuned", "runs": _runs([300, 1000], [5, 10])[:1]}, {"name": "ray-1", "runs": _runs([100, 850], [9, 30])[:1]}]
    c = bench_served.compare(configs, "tuned", "ray-1")
    assert c["concurrency"] == 1 and c["rps_ratio"] == pytest.approx(100 / 300)


@pytest.mark.slow
def test_served_ray_puts_torchserve_and_ray_side_by_side(built_root, tmp_path):
    """--served ray: TorchServe (default, tuned) and Ray Serve (1 and 2 replicas at their own addresses, and 1
    through Serve's proxy), real servers, one sweep each."""
    pytest.importorskip("ray", reason="the ray extra is not installed (make test installs it)")

    copy_root(built_root, tmp_path)
    result = bench.run(tiny(tmp_path, engines=("onnxruntime",), batch_sizes=(1,), cold_start=False, served="ray"))
    served = result["served"]
    assert [c["name"] for c in served["configs"]] == ["default", "tuned", "ray-1", "ray-1-proxy", "ray-2"]
    for config in served["configs"]:
        assert [r["concurrency"] for r in config["runs"]] == list(CONCURRENCY)
        assert all(r["requests"] > 0 and r["errors"] == 0 for r in config["runs"]), config["name"]
        assert all(p["requests"] > 0 and p["errors"] == 0 for p in config["ping"]), config["name"]  # the floor answered too
    ray_configs = {c["name"]: c["server_config"] for c in served["configs"][2:]}
    assert {n: (c["replicas"], c["route"], c["addresses"]) for n, c in ray_configs.items()} == {
        "ray-1": (1, "direct ingress", 1),
        "ray-1-proxy": (1, "Serve's proxy", 1),
        "ray-2": (2, "direct ingress", 2),
    }
    assert [(c["base"], c["other"]) for c in served["comparisons"]] == list(bench_served.RAY_COMPARISONS)
    md = (tmp_path / "reports" / "simple_nn" / "latency.md").read_text()
    assert "### TorchServe and Ray Serve side by side" in md and "| clients | default | tuned | ray-1 | ray-1-proxy | ray-2 |" in md
    import psutil

    left = [p.info["cmdline"] for p in psutil.process_iter(["cmdline"]) if "/pipeline-ray-" in " ".join(p.info["cmdline"] or ())]
    assert left == []  # every process of both local Ray clusters is gone (they all name the cluster's temp folder)


@pytest.mark.slow
def test_gated_variants_run_beside_fp32_with_size_metric_and_cold_start(digits_int8, tmp_path):
    from pipeline.settings import Layout

    copy_root(digits_int8[1].root, tmp_path)  # the bench writes its reports into the project
    layout = Layout(tmp_path.resolve(), "digits_cnn")
    result = bench.run(tiny(tmp_path, model="digits_cnn", engines=bench.DEFAULT_ENGINES, served="off", batch_sizes=(1, 64)))
    ran = {(r["engine"], r["batch"]) for r in result["in_process"]}
    assert {("onnxruntime-int8", 1), ("onnxruntime-int8", 64), ("onnxruntime", 64)} <= ran
    (variant,) = result["variants"]
    assert variant["variant"] == "int8" and variant["device"] == "cpu" and variant["size_vs_fp32"] <= 0.35
    assert set(variant["throughput_vs_fp32_p50"]) == {1, 64} and all(v > 0 for v in variant["throughput_vs_fp32_p50"].values())
    assert variant["task_metric"]["name"] == "held-out accuracy" and variant["cold_start_s"] > 0
    text = (layout.reports / "latency.md").read_text()
    assert "## Smaller variants against fp32 ONNX Runtime" in text and "| int8 | cpu | static |" in text


def test_variant_engines_run_only_on_the_device_their_gate_ran_on():
    assert engines.skip_reason("onnxruntime-int8", "cuda") == "the int8 variant is made and verified for the CPU"
    assert engines.skip_reason("onnxruntime-fp16", "cpu") == "the fp16 variant is made and verified for CUDA"
    assert engines.skip_reason("onnxruntime-int8", "cpu") is None


def test_length_option_reads_axis_equals_n():
    import argparse

    from pipeline.cli.bench import lengths

    assert lengths("seq=512") == {"seq": 512} and lengths("seq=128, other=3") == {"seq": 128, "other": 3}
    for bad in ("seq", "seq=0", "=5", "seq=x", ""):
        with pytest.raises(argparse.ArgumentTypeError):
            lengths(bad)
    assert bench.BenchSettings(lengths={"seq": 512}).report_stem() == "latency-seq512" and bench.BenchSettings().report_stem() == "latency"


def test_torchscript_not_made_is_left_out_of_the_default_engines_and_refused_when_named(tmp_path, built_root):
    from pipeline.artifacts import files
    from pipeline.artifacts.manifest import Manifest
    from pipeline.models import load_spec

    copy_root(built_root, tmp_path)
    manifest = Manifest(tmp_path, "simple_nn")
    note = tmp_path / "artifacts" / "simple_nn" / "model.ts.not-made.json"
    files.write_json(note, {"made": False})
    old = manifest.records["torchscript"]
    made = manifest.record(
        "torchscript", note, "trace", old.inputs, old.settings, 0.0, {"not_made": "the tracer failed", "what_to_do": "-"}
    )
    parity = manifest.records["parity"]  # as parity would record it after the note, or the chain is stale
    manifest.records["parity"] = dataclasses.replace(parity, inputs={**parity.inputs, "torchscript": made.sha256})
    manifest.save()
    spec = load_spec("simple_nn")
    kept = bench.check(tiny(tmp_path, engines=bench.DEFAULT_ENGINES), spec, manifest)
    assert "torchscript" not in kept.engines and "onnxruntime" in kept.engines
    with pytest.raises(PipelineError, match="TorchScript was not made for simple_nn: the tracer failed"):
        bench.check(tiny(tmp_path, engines=("eager", "torchscript")), spec, manifest)
