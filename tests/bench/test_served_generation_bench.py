"""The served generation benchmark on a tiny Llama: a real server on 127.0.0.1 streams the OpenAI API to
the official client at 1 and 2 streams and through a short load phase; the report's figures agree with
each other and with the project's own loop, nothing fails, and no server process is left afterwards.
One server, to stay well under a minute: TorchServe where java is, Ray Serve where it is not.
No wall-clock assertion: these machines are shared and noisy."""

from __future__ import annotations

import argparse
import json
import shutil

import numpy as np
import psutil
import pytest

pytest.importorskip("transformers")
pytest.importorskip("openai")

from pipeline.bench import generation, served_generation
from pipeline.bench.served_generation import ServedSettings
from pipeline.cli import bench as bench_cli
from pipeline.errors import PipelineError
from pipeline.generation import text
from pipeline.generation.loop import Options, Run
from pipeline.models import load_spec
from tests.generation.checkpoints import save_decoder
from tests.helpers import copy_root

MAX_TOKENS = 8
SERVER = "torchserve" if shutil.which("java") else "ray"


@pytest.fixture(scope="module")
def built(small_llama, tmp_path_factory):
    """A copy of the session's small Llama project (the report is written into it), at a short root:
    TorchServe's sockets live under it."""
    folder, shared = small_llama
    root = tmp_path_factory.mktemp("sgen") / "p"
    copy_root(shared, root)
    return f"hf:{folder}", root


@pytest.fixture(scope="module")
def report(built):
    if served_generation.unavailable(SERVER):
        pytest.skip(served_generation.unavailable(SERVER))
    model, root = built
    served = ServedSettings(
        servers=(SERVER,),
        streams=(1, 2),
        seconds=1.0,
        load_streams=2,
        load_seconds=2.0,
        prompt_tokens=8,
        max_tokens=MAX_TOKENS,
        threads=1,
        in_process_repeats=3,
    )
    settings = generation.GenerationSettings(
        model=model,
        root=root,
        engines=("onnxruntime",),
        prompt_lengths=(8,),
        new_tokens=MAX_TOKENS,
        batch_sizes=(1,),
        repeats=1,
        threads=1,
        served=served,
    )
    generation.run(settings)
    return json.loads((root / "reports" / "llama" / "latency.json").read_text())


def levels(report) -> list[dict]:
    record = report["served"]["servers"][0]
    return [*record["levels"], record["load"]]


@pytest.mark.slow
def test_every_stream_count_and_the_load_phase_are_measured_without_errors(report):
    served = report["served"]
    assert served["failures"] == [] and [s["server"] for s in served["servers"]] == [SERVER]
    record = served["servers"][0]
    assert [lv["streams"] for lv in record["levels"]] == [1, 2] and record["load"]["streams"] == 2
    assert record["warmup_errors"] == []
    for lv in levels(report):
        assert lv["errors"] == 0 and lv["first_error"] is None and lv["completed"] == lv["requests"] >= lv["streams"]
        assert lv["peak_rss_mib"] > 0 and lv["server_processes"] >= 1 and lv["client_cpu_percent"] > 0


@pytest.mark.slow
def test_the_figures_agree_with_each_other(report):
    for lv in levels(report):
        counts = {int(k): v for k, v in lv["tokens_per_request"].items()}
        assert sum(counts.values()) == lv["requests"] == sum(lv["finish_reasons"].values())
        assert sum(k * v for k, v in counts.items()) == lv["completion_tokens"]  # the usage chunks, summed
        assert max(counts) <= MAX_TOKENS and lv["text_chunks"] <= lv["completion_tokens"]  # a text chunk carries a token at least
        assert lv["tokens_per_s"] == pytest.approx(lv["completion_tokens"] / lv["seconds"])
        assert 0 < lv["ttft_ms_p50"] <= lv["ttft_ms_p99"] and 0 < lv["itl_ms_p50"] <= lv["itl_ms_p99"]
        assert lv["prompt_tokens"] == [report["served"]["in_process"]["prompt_tokens"]]
    record = report["served"]["servers"][0]
    assert record["ttft_vs_in_process"] == pytest.approx(record["levels"][0]["ttft_ms_p50"] / report["served"]["in_process"]["ttft_ms_p50"])
    assert record["peak_rss_mib"] == max(lv["peak_rss_mib"] for lv in levels(report))


@pytest.mark.slow
def test_served_greedy_tokens_are_the_loops_tokens(report, built):
    """At one stream the same prompt answers with the same tokens every time: as many as the project's loop gives it in process,
    and text from the first token on (the prompt was chosen for it), so every request has a TTFT."""
    from pipeline.generation.engines import OnnxEngine
    from pipeline.runtimes.session import SessionConfig

    gen = load_spec(built[0]).generation
    assert gen is not None
    tokenizer = text.load(gen.tokenizer)
    in_process = report["served"]["in_process"]
    prompt = served_generation.prompts(tokenizer, gen, ServedSettings(streams=(1, 2), load_streams=2, prompt_tokens=8))[
        in_process["prompt_index"]
    ]
    ids = text.encode(tokenizer, [prompt], gen.bos_id)
    onnx = built[1] / "artifacts" / "llama" / "model.onnx"
    engine = OnnxEngine(onnx, gen, SessionConfig(device="cpu", threads=1))
    done = Run(engine, gen, tokenizer, ids, Options(max_new_tokens=MAX_TOKENS)).finish()
    one = report["served"]["servers"][0]["levels"][0]
    assert one["tokens_per_request"] == {str(len(done[0].tokens)): one["requests"]}
    assert in_process["first_text_at_token"] == 1 and one["requests_without_text"] == 0 and len(in_process["ttft_ms_runs"]) == 3


@pytest.mark.slow
def test_the_server_is_stopped_afterwards(report, built):
    root = str(built[1].resolve())
    assert report["served"]["servers"][0]["left_running"] == []
    mine = []
    for proc in psutil.process_iter(["pid", "cmdline"]):
        try:
            if root + "/" in " ".join(proc.info["cmdline"] or ()):
                mine.append(proc.info)
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    assert mine == []
    assert not (built[1] / "run" / "llama" / "server.json").exists() and not (built[1] / "run" / "llama" / "ray" / "server.json").exists()


@pytest.mark.slow
def test_the_markdown_has_a_table_per_server_the_ratio_and_the_load_phase(report, built):
    md = (built[1] / "reports" / "llama" / "latency.md").read_text()
    assert f"### {SERVER}" in md and "Served TTFT at one stream: **" in md and "Load phase: 0 error(s)" in md
    assert "| streams | requests | TTFT p50 ms | TTFT p99 ms | ITL p50 ms | ITL p99 ms | tokens/s | errors | peak memory MiB |" in md
    assert md.count("| load: 2 for ") == 1
    assert "CPU (" in md


def test_the_cli_maps_its_served_options():
    parser = argparse.ArgumentParser()
    bench_cli.add_arguments(parser)
    base = ["--model", "m", "--prompt-lengths", "24,512", "--new-tokens", "12"]
    served = bench_cli.served_settings_from_args(parser.parse_args(base))
    assert served == ServedSettings(prompt_tokens=24, max_tokens=12, threads=served.threads)
    assert (served.streams, served.seconds, served.load_seconds) == ((1, 4, 16), 10.0, 60.0)
    args = parser.parse_args([*base, "--concurrency", "2,3", "--served-seconds", "4", "--load-seconds", "0"])
    assert bench_cli.served_settings_from_args(args) == ServedSettings(
        streams=(2, 3), seconds=4.0, load_seconds=0.0, prompt_tokens=24, max_tokens=12, threads=served.threads
    )
    assert bench_cli.served_settings_from_args(parser.parse_args([*base, "--served", "off"])) is None
    with pytest.raises(PipelineError, match="--served running is not measured for a text-generation model"):
        bench_cli.served_settings_from_args(parser.parse_args([*base, "--served", "running"]))
    assert bench_cli.settings_from_args(parser.parse_args(["--model", "m"])).concurrency == (1, 4, 16, 64)


def test_settings_the_servers_cannot_meet_are_refused(tmp_path):
    gen = load_spec(f"hf:{save_decoder('llama', tmp_path / 'llama')}").generation
    assert gen is not None
    with pytest.raises(PipelineError, match="unknown server"):
        served_generation.check(ServedSettings(servers=("triton",)), gen)
    with pytest.raises(PipelineError, match="the model's cap is 256"):
        served_generation.check(ServedSettings(max_tokens=999), gen)
    with pytest.raises(PipelineError, match="stream counts must be positive"):
        served_generation.check(ServedSettings(streams=(0,)), gen)


def test_level_stats_follow_the_definitions():
    requests = [
        served_generation.Request(ttft_s=0.010, gaps_s=[0.001, 0.003], tokens=3, prompt_tokens=5, text_chunks=3, finish_reason="length"),
        served_generation.Request(ttft_s=0.030, gaps_s=[0.002], tokens=2, prompt_tokens=5, text_chunks=2, finish_reason="stop"),
        served_generation.Request(error="APIConnectionError: Connection error."),
    ]
    memory = served_generation.PeakMemory(lambda: [])
    memory.peak = 2**20
    lv = served_generation.level_stats(2, served_generation.Driven(requests, 0.5, 0.25), memory)
    assert (lv["requests"], lv["completed"], lv["errors"], lv["first_error"]) == (3, 2, 1, "APIConnectionError: Connection error.")
    assert lv["tokens_per_s"] == pytest.approx(5 / 0.5) and lv["peak_rss_mib"] == 1.0 and lv["client_cpu_percent"] == pytest.approx(50.0)
    assert lv["ttft_ms_p50"] == pytest.approx(20.0) and lv["ttft_ms_p99"] == pytest.approx(np.percentile([10, 30], 99))
    assert lv["itl_ms_p50"] == pytest.approx(2.0) and lv["tokens_per_request"] == {"2": 1, "3": 1}
