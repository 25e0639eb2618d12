"""The benchmark sends real inputs: a 640 x 480 JPEG or a sentence, and the same tensors in binary.

The tests' image and text models (tests/fixtures/vit_images.py, bert_text.py) through the
chain; the served sweep against a real TorchServe with each load generator, and the handler
timed with its preprocessing apart. Schema and sanity only, never a wall-clock threshold.
"""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
from PIL import Image
from tqdm import tqdm

from pipeline.bench import handler_time, inputs
from pipeline.bench import latency as bench
from pipeline.bench import served as bench_served
from pipeline.bench.loadgen import wrk_available
from pipeline.models import load_spec
from pipeline.serving.common import oip, preprocess
from pipeline.serving.common.contract import Contract, declare
from pipeline.serving.common.samples import sample_requests
from pipeline.serving.torchserve import server as serve
from pipeline.settings import Layout
from tests.helpers import archive_handler, interleaved_p50_us, needs_java
from tests.serving import real_models
from tests.serving.real_models import model_files


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """name -> (spec, contract, tokenizer bytes or None) for both models, before any chain runs."""
    out = {}
    for name, path in model_files(tmp_path_factory.mktemp("bench-real")).items():
        spec = load_spec(str(path))
        tokenizer = path.with_name("tokenizer.json").read_bytes() if spec.text_input else None
        out[name] = (spec, Contract(declare(spec)), tokenizer)
    return out


@pytest.fixture(scope="module")
def chains(text_image_root, tmp_path_factory):
    """name -> Settings of this module's copy of both models' whole chain, free to serve and bench in."""
    return real_models.copy(text_image_root, tmp_path_factory.mktemp("bench-real-chains") / "project")


def test_an_image_model_is_sent_a_640x480_jpeg_and_its_tensor_in_binary(models):
    spec, contract, _ = models["vit_images"]
    request, binary = sample_requests(spec)
    assert request.kind == "jpeg 640x480" and request.content_type == "image/jpeg" and request.route == "predictions"
    assert Image.open(io.BytesIO(request.body)).size == (640, 480)
    assert binary is not None and binary.route == "infer" and binary.content_type == "application/octet-stream"
    # The binary request holds exactly what the archive's reader makes of the JPEG.
    want, _ = preprocess.reader(contract).read({"body": request.body}, "image/jpeg")
    body, _ = oip.decode_infer(binary.body, dict(binary.headers)[oip.HEADER_LENGTH], contract)
    np.testing.assert_array_equal(body["pixel_values"], want["pixel_values"])


def test_a_text_model_is_sent_a_sentence_and_its_tokens_in_binary(models):
    spec, contract, tokenizer = models["bert_text"]
    request, binary = sample_requests(spec)
    assert request.kind == "text" and "text" in json.loads(request.body)
    assert binary is not None
    want, _ = preprocess.reader(contract, tokenizer).read({"body": request.body}, "application/json")
    body, _ = oip.decode_infer(binary.body, dict(binary.headers)[oip.HEADER_LENGTH], contract)
    assert sorted(body) == sorted(want) and all(np.array_equal(body[k], want[k]) for k in want)


def test_a_model_of_tensors_alone_is_sent_json_and_nothing_else(built):
    s, _ = built
    spec = load_spec(s.model)
    request, binary = sample_requests(spec)
    assert request.kind == "json tensor" and binary is None and json.loads(request.body)


@pytest.mark.slow
@needs_java
def test_the_served_sweep_sends_the_jpeg_and_the_binary_tensor_to_a_real_torchserve(models, chains):
    spec, _, _ = models["vit_images"]
    s = chains["vit_images"]
    generators = ["locust", *(["wrk"] if wrk_available() else [])]
    serve.start(s, auto_ports=True)
    try:
        for generator in generators:
            settings_ = bench.BenchSettings(
                model=s.model, root=s.root, served="running", concurrency=(1, 2), served_seconds=1.0, load_generator=generator
            )
            served = bench_served.run(settings_, spec, Layout(s.root.resolve(), spec.name), tqdm(disable=True))
            runs = served["configs"][0]["runs"]
            assert served["request"]["kind"] == "jpeg 640x480" and "request_body" not in served
            compared = served["inputs"]
            assert [r["concurrency"] for r in compared["per_concurrency"]] == [1, 2]
            for r in [*runs, *compared["binary_runs"]]:
                assert r["generator"] == generator and r["requests"] > 0 and r["status"] == {"200": r["requests"]}, r
            for r in compared["per_concurrency"]:
                assert r["errors"] == 0 and r["p50_ratio"] == pytest.approx(r["p50_ms"] / r["binary_p50_ms"])
    finally:
        serve.stop(s)


@pytest.mark.slow
def test_the_handler_times_decoding_apart_from_the_model(models, chains, tmp_path, measure):
    spec, _, _ = models["vit_images"]
    s = chains["vit_images"]
    request, _ = sample_requests(spec)
    mar = s.root / "model_store" / "vit_images.mar"
    timed = handler_time.measure_in_child(mar, request.body, preprocessed=True)
    per = timed["us_per_request"]
    assert timed["body_bytes"] == len(request.body) and set(per) == {"1", "8"}
    assert all(v > 0 for v in per.values()) and timed["preprocess_us_per_request"] > 0
    # Reading the request is part of handling it. Decoding is nearly all of this tiny model's handler, so the two
    # are compared timed in turn, call by call: medians measured one after the other would carry the machine's drift.
    module, ctx = archive_handler(mar, tmp_path / "model_dir")
    reader = module.handle.predictor.reader
    p50 = interleaved_p50_us(
        {"handler": lambda: module.handle([{"body": request.body}], ctx), "reader": lambda: reader.read({"body": request.body}, None)},
        rounds=200,
    )
    line = measure(f"vit_images' handler {p50['handler']:.0f} µs, its reader alone {p50['reader']:.0f} µs (interleaved p50)")
    assert 0 < p50["reader"] < p50["handler"], line


def test_lengths_stretch_the_text_axis_and_are_refused_past_the_model(models):
    spec, contract, _ = models["bert_text"]
    feed = spec.sample_inputs(2, np.random.default_rng(0))
    long = inputs.at_lengths(spec, feed, {"seq": 40})
    for t in spec.inputs:
        assert long[t.name].shape == (2, 40)
        np.testing.assert_array_equal(long[t.name][:, : feed[t.name].shape[1]], feed[t.name])  # the sample's own values, repeated
    assert long["attention_mask"].all() and long["input_ids"].max() <= spec.inputs[0].high
    assert inputs.at_lengths(spec, feed, {})["input_ids"].shape == feed["input_ids"].shape
    inputs.check_lengths(spec, {"seq": contract.max_lengths["seq"]}, "bench")
    with pytest.raises(bench.PipelineError, match=r"outside 1\.\.\d+"):
        inputs.check_lengths(spec, {"seq": contract.max_lengths["seq"] + 1}, "bench")
    with pytest.raises(bench.PipelineError, match="no axis 'pixels'"):
        inputs.check_lengths(spec, {"pixels": 4}, "bench")
    with pytest.raises(bench.PipelineError, match="no axis 'batch'"):
        inputs.check_lengths(spec, {"batch": 4}, "bench")


@pytest.mark.slow
def test_a_bench_at_a_sequence_length_writes_its_own_reports(models, chains):
    spec, _, _ = models["bert_text"]
    s = chains["bert_text"]
    settings_ = bench.BenchSettings(
        model=s.model,
        root=s.root,
        engines=("eager", "onnxruntime"),
        batch_sizes=(1, 2),
        budget_s=0.05,
        rounds=2,
        warmup_s=0.02,
        served="off",
        lengths={"seq": 32},
    )
    report = bench.run(settings_)
    folder = s.root / "reports" / spec.name
    assert report["settings"]["lengths"] == {"seq": 32}
    measured = {(r["engine"], r["batch"]) for r in report["in_process"] if not r["engine"].startswith("floor:")}
    assert measured == {(e, b) for e in ("eager", "onnxruntime") for b in (1, 2)}
    assert "in process at seq = 32" in (folder / "latency-seq32.md").read_text()
    assert json.loads((folder / "latency-seq32.json").read_text())["settings"]["lengths"] == {"seq": 32}
    assert report["cold_start"] and all("error" not in c for c in report["cold_start"])  # the cold starts took the long feed too
