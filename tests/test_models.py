"""Every example model through the whole chain, then its archive's handler and a real TorchServe.

Each model is built once per session in its own temporary project (simple_nn reuses
the shared `built_root`). The handler is exercised in-process for every model; the
models that stress what the MLP does not (an int64 embedding index, two outputs of
different dtypes, a dynamic sequence axis) are also served by a real TorchServe.
"""

from __future__ import annotations

import json
import zipfile
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import onnx
import pytest
import torch

from pipeline.artifacts import checkpoint, files
from pipeline.artifacts.manifest import Manifest
from pipeline.artifacts.names import ARCHIVE_CONTRACT
from pipeline.models import load_spec
from pipeline.serving.common.contract import declare
from pipeline.serving.torchserve import server as serve
from pipeline.settings import Layout, Settings
from tests.helpers import archive_handler, copy_root, needs_java

MODELS = ["simple_nn", "digits_cnn", "store_demand", "seq_encoder"]
SERVED = ["digits_cnn", "store_demand", "seq_encoder"]


@pytest.fixture(params=MODELS)
def chain(request, chains):
    return load_spec(request.param), *chains(request.param)


def eager_outputs(spec, layout, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    model, _ = checkpoint.load_model(Manifest(layout.root, spec.name), spec, "test")
    args = [torch.from_numpy(feed[t.name]) for t in spec.inputs]
    with torch.inference_mode():
        out = model(*args)
    out = out if isinstance(out, tuple) else (out,)
    return {t.name: v.numpy() for t, v in zip(spec.outputs, out)}


def request_feed(spec, body: dict) -> dict[str, np.ndarray]:
    """A one-row request body as the arrays the model sees: batch of 1, trailing 1-sized axes restored."""
    feed = {}
    for t in spec.inputs:
        value = np.asarray(body[t.name], dtype=t.dtype)
        feed[t.name] = value.reshape(1, *value.shape, *(1,) * (len(t.shape) - 1 - value.ndim))
    return feed


def assert_answer(spec, answer: dict, want: dict[str, np.ndarray], single: bool) -> None:
    assert sorted(answer) == sorted(t.name for t in spec.outputs)
    for t in spec.outputs:
        got = np.asarray(answer[t.name], dtype=t.dtype)
        expected = want[t.name][0] if single else want[t.name]
        expected = expected.reshape(got.shape)  # the answer drops trailing 1-sized axes
        if np.issubdtype(got.dtype, np.integer):
            np.testing.assert_array_equal(got, expected, err_msg=t.name)
        else:
            np.testing.assert_allclose(got, expected, atol=spec.tolerance.atol, rtol=spec.tolerance.rtol, err_msg=t.name)


@pytest.mark.slow
def test_chain_writes_verified_artifacts_with_the_declared_contract(chain):
    spec, settings, layout = chain
    manifest = Manifest(layout.root, spec.name)
    for key in ("checkpoint", "torchscript", "onnx", "parity", "mar"):
        path, rec = manifest.verified(key, "test")
        assert files.sha256_file(path) == rec.sha256
    # Every declared dynamic axis is symbolic in the saved graph, with the declared dtype.
    graph = onnx.load(str(layout.onnx))
    values = {v.name: v for v in (*graph.graph.input, *graph.graph.output)}
    for t in (*spec.inputs, *spec.outputs):
        dims = values[t.name].type.tensor_type.shape.dim
        assert len(dims) == len(t.shape)
        for axis in t.dynamic_axes():
            assert dims[axis].dim_param, f"{t.name} axis {axis} is fixed"
        assert onnx.helper.tensor_dtype_to_np_dtype(values[t.name].type.tensor_type.elem_type) == np.dtype(t.dtype)
    with zipfile.ZipFile(layout.mar) as zf:
        assert json.loads(zf.read(ARCHIVE_CONTRACT)) == declare(spec)


@pytest.mark.slow
def test_parity_covers_every_engine_case_and_output(chain):
    spec, _, layout = chain
    report = json.loads((layout.reports / "parity.json").read_text())
    assert report["passed"] and report["model"] == spec.name
    cases = {r["case"] for r in report["results"]}
    assert {f"random b={b}" for b in (1, 2, 7, 64, 1000)} <= cases
    if spec.parity_cases is not None:
        assert set(spec.parity_cases(np.random.default_rng(0))) <= cases
    for engine in ("torchscript", "onnxruntime-cpu"):
        for t in spec.outputs:
            assert {r["case"] for r in report["results"] if r["engine"] == engine and r["output"] == t.name} == cases


@pytest.mark.slow
def test_sequence_model_parity_at_several_lengths_including_1(chains):
    _, layout = chains("seq_encoder")
    report = json.loads((layout.reports / "parity.json").read_text())
    lengths = {r["case"].split()[0] for r in report["results"] if r["case"].startswith("seq=")}
    assert {"seq=1", "seq=2", "seq=33", "seq=100"} <= lengths
    assert all(r["passed"] for r in report["results"])


@pytest.mark.slow
def test_cnn_held_out_accuracy_is_in_the_manifest(chains):
    _, layout = chains("digits_cnn")
    metrics = Manifest(layout.root, "digits_cnn").records["checkpoint"].details["metrics"]
    assert metrics["held_out_accuracy"] >= 0.95
    assert metrics["held_out_images"] >= 300


@pytest.mark.slow
def test_archive_handler_answers_the_example_request(chain, tmp_path):
    """The handler from the archive, in-process: example request in, eager's answer out."""
    spec, _, layout = chain
    handler, ctx = archive_handler(layout.mar, tmp_path)
    [raw] = handler.handle([{"body": json.dumps(spec.example_request).encode()}], ctx)
    assert ctx.status.get(0, (200,))[0] == 200, raw
    assert_answer(spec, json.loads(raw), eager_outputs(spec, layout, request_feed(spec, spec.example_request)), single=True)
    # An empty body's message shows this model's own example, not another model's.
    [raw] = handler.handle([{"body": b""}], ctx)
    assert json.dumps(spec.example_request) in json.loads(raw)["error"]


@pytest.mark.slow
def test_handler_batch_mixing_sequence_lengths_and_a_bad_request(chains, tmp_path):
    """One TorchServe batch with lengths 3, 1, 3 and 5 and a bad request: each answered on its own."""
    spec = load_spec("seq_encoder")
    _, layout = chains("seq_encoder")
    handler, ctx = archive_handler(layout.mar, tmp_path)
    rng = np.random.default_rng(9)
    feeds = [rng.integers(0, 10, size=(b, n)).astype(np.int64) for b, n in ((2, 3), (1, 1), (1, 3), (4, 5))]
    bodies = [{"tokens": f.tolist()} for f in feeds]
    bodies.insert(2, {"tokens": [[1, 2], [3]]})
    raws = handler.handle([{"body": json.dumps(b).encode()} for b in bodies], ctx)
    assert ctx.status.get(2, (200,))[0] == 400 and "separate requests" in json.loads(raws.pop(2))["error"]
    for tokens, raw in zip(feeds, raws):
        assert_answer(spec, json.loads(raw), eager_outputs(spec, layout, {"tokens": tokens}), single=False)


# --- a real TorchServe per served model ---------------------------------------------------


@pytest.fixture(scope="module", params=SERVED)
def server(request, chains, tmp_path_factory):
    spec = load_spec(request.param)
    _, layout = chains(request.param)
    root = tmp_path_factory.mktemp(f"serve_{spec.name}") / "project"
    copy_root(layout.root, root)
    settings = Settings(model=spec.name, root=root)
    info = serve.start(settings, auto_ports=True, timeout=120)
    yield spec, Layout(root.resolve(), spec.name), info
    serve.stop(settings)
    assert info.processes() == [], "server processes left behind"


def post(info, obj) -> tuple[int, dict]:
    status, body = info.predict(json.dumps(obj).encode())
    return status, json.loads(body)


@pytest.mark.slow
@needs_java
def test_served_example_request_matches_eager(server):
    spec, layout, info = server
    status, answer = post(info, spec.example_request)
    assert status == 200, answer
    assert_answer(spec, answer, eager_outputs(spec, layout, request_feed(spec, spec.example_request)), single=True)


@pytest.mark.slow
@needs_java
def test_served_batch_of_rows_matches_eager(server):
    spec, layout, info = server
    feed = spec.sample_inputs(5, np.random.default_rng(3))
    status, answer = post(info, {name: value.tolist() for name, value in feed.items()})
    assert status == 200, answer
    assert_answer(spec, answer, eager_outputs(spec, layout, feed), single=False)


@pytest.mark.slow
@needs_java
def test_served_model_specific_requests(server):
    spec, layout, info = server
    CHECKS[spec.name](spec, layout, info)


def check_digits(spec, layout, info):
    from pipeline.models.digits_cnn import load_split

    _, images, _, labels = load_split(0)
    status, answer = post(info, {"image": images[:50].tolist()})
    assert status == 200
    assert np.mean(np.array(answer["label"]) == labels[:50]) >= 0.9
    assert np.allclose(np.sum(answer["probabilities"], axis=1), 1.0, atol=1e-5)
    assert all(isinstance(v, int) for v in answer["label"])
    status, answer = post(info, {"image": images[0].tolist()})  # one 8x8 image as a nested list
    assert status == 200 and answer["label"] == labels[0] and len(answer["probabilities"]) == 10
    for bad, message in [({"image": [[0] * 8] * 7}, "has shape [7, 8]"), ({"image": [[17] * 8] * 8}, "values must lie in [0.0, 16.0]")]:
        status, answer = post(info, bad)
        assert status == 400 and message in answer["error"], answer


def check_store(spec, layout, info):
    status, answer = post(info, {"features": [[0.5, -1.0, 1.5, 0.0], [1, 1, 1, 1]], "store": [3, 7]})
    assert status == 200 and len(answer["demand"]) == 2 and answer["level"] == [int(v) for v in answer["level"]]
    for bad, message in [
        ({"features": [0.0] * 4, "store": 8}, "holds 8; values must lie in [0, 7]"),
        ({"features": [0.0] * 4, "store": -1}, "holds -1; values must lie in [0, 7]"),
        ({"features": [0.0] * 4, "store": 1.5}, "must hold integers"),
        ({"features": [[0.0] * 4] * 2, "store": [1]}, "disagree on the number of rows"),
        ({"features": [0.0] * 4}, "missing field(s) ['store']"),
    ]:
        status, answer = post(info, bad)
        assert status == 400 and message in answer["error"], answer
    # A bad store id in a concurrent batch fails alone; the worker survives it.
    bodies = [{"features": [0.1] * 4, "store": s} for s in (1, 99, 2, 3)]
    with ThreadPoolExecutor(4) as pool:
        codes = [status for status, _ in pool.map(lambda b: post(info, b), bodies)]
    assert codes == [200, 400, 200, 200]


def check_sequences(spec, layout, info):
    # Concurrent requests of different lengths land in one TorchServe batch: the handler
    # runs one ONNX Runtime call per length, and every answer must match eager.
    rng = np.random.default_rng(5)
    requests = [rng.integers(0, 10, size=(1 + i % 3, n)).astype(np.int64) for i, n in enumerate((1, 7, 7, 30, 1, 64, 2, 7))]
    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(lambda t: post(info, {"tokens": t.tolist()}), requests))
    for tokens, (status, answer) in zip(requests, answers):
        assert status == 200, answer
        assert_answer(spec, answer, eager_outputs(spec, layout, {"tokens": tokens}), single=False)
    for bad, message in [
        ({"tokens": [[1, 2, 3], [4, 5]]}, "separate requests"),
        ({"tokens": []}, "empty"),
        ({"tokens": [[]]}, "empty along 'seq'"),
        ({"tokens": [1, 10]}, "values must lie in [0, 9]"),
    ]:
        status, answer = post(info, bad)
        assert status == 400 and message in answer["error"], answer


CHECKS = {"digits_cnn": check_digits, "store_demand": check_store, "seq_encoder": check_sequences}
