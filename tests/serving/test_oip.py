"""The Ray application's parts that need no cluster: the OIP codec, its options, archive fetching, the token."""

from __future__ import annotations

import asyncio
import hashlib
import json
import re
import zipfile

import numpy as np
import pytest

from pipeline.errors import IntegrityError, PipelineError
from pipeline.serving.common import oip
from pipeline.serving.common.contract import Contract, RequestError
from pipeline.serving.ray.app import RayAppOptions, deployment_options, fetch_archive, load, read_token

CONTRACT = Contract(
    {
        "model": "m",
        "inputs": [{"name": "x", "dtype": "float32", "shape": ["batch", 1]}, {"name": "ids", "dtype": "int64", "shape": ["batch", "seq"]}],
        "outputs": [{"name": "y", "dtype": "float32", "shape": ["batch", 1]}],
        "max_rows_per_request": 8,
    }
)


def _binary(head: dict, *arrays: np.ndarray) -> tuple[bytes, str]:
    text = json.dumps(head).encode()
    return text + b"".join(a.tobytes() for a in arrays), str(len(text))


def test_metadata_names_dynamic_axes_minus_one():
    meta = oip.metadata(CONTRACT, "0123456789ab")
    assert meta["versions"] == ["0123456789ab"]
    assert meta["inputs"] == [{"name": "x", "datatype": "FP32", "shape": [-1, 1]}, {"name": "ids", "datatype": "INT64", "shape": [-1, -1]}]


def test_json_tensors_become_the_contracts_body():
    raw = json.dumps(
        {
            "id": "7",
            "inputs": [
                {"name": "x", "shape": [2, 1], "datatype": "FP32", "data": [1.0, 2.0]},
                {"name": "ids", "shape": [2, 3], "datatype": "INT64", "data": [1, 2, 3, 4, 5, 6]},
            ],
        }
    ).encode()
    body, plan = oip.decode_infer(raw, None, CONTRACT)
    assert body == {"x": [[1.0], [2.0]], "ids": [[1, 2, 3], [4, 5, 6]]}
    assert plan == {"id": "7", "binary": {"y": False}}
    feed, single = CONTRACT.parse(body)
    assert feed["ids"].shape == (2, 3) and not single


def test_binary_tensors_are_read_in_order():
    x, ids = np.array([[1.5]], np.float32), np.array([[7, 8]], np.int64)
    head = {
        "inputs": [
            {"name": "x", "shape": [1, 1], "datatype": "FP32", "parameters": {"binary_data_size": 4}},
            {"name": "ids", "shape": [1, 2], "datatype": "INT64", "parameters": {"binary_data_size": 16}},
        ],
        "parameters": {"binary_data_output": True},
    }
    body, plan = oip.decode_infer(*_binary(head, x, ids), CONTRACT)
    assert plan["binary"] == {"y": True}
    # Binary tensors stay arrays (no Python list per value), of the declared dtype and shape.
    assert isinstance(body["x"], np.ndarray) and body["x"].dtype == np.float32 and body["x"].tolist() == [[1.5]]
    assert isinstance(body["ids"], np.ndarray) and body["ids"].dtype == np.int64 and body["ids"].tolist() == [[7, 8]]
    feed, single = CONTRACT.parse(body)
    assert not single and feed["x"].tolist() == [[1.5]] and feed["ids"].tolist() == [[7, 8]]


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_a_binary_tensor_holding_nan_or_infinity_is_refused(bad):
    """JSON cannot carry NaN or Infinity; raw float bytes can, and the contract refuses them by name."""
    body, _ = oip.decode_infer(*oip.encode_request({"x": np.array([[bad]], np.float32), "ids": np.array([[7, 8]], np.int64)}), CONTRACT)
    with pytest.raises(RequestError, match="'x' holds NaN or infinity"):
        CONTRACT.parse(body)


def test_encode_request_is_what_tritonclient_sends():
    """The benchmark's binary body decodes as tritonclient's own (generate_request_body) does."""
    from tritonclient.http import InferenceServerClient, InferInput

    x, ids = np.array([[1.5], [2.5]], np.float32), np.array([[7, 8], [9, 10]], np.int64)
    theirs = []
    for name, arr in (("x", x), ("ids", ids)):
        tensor = InferInput(name, list(arr.shape), oip.datatype(arr.dtype.name))
        tensor.set_data_from_numpy(arr, binary_data=True)
        theirs.append(tensor)
    body, length = InferenceServerClient.generate_request_body(theirs)
    ours = oip.encode_request({"x": x, "ids": ids})
    for raw, header in ((body, length), ours):
        decoded, _ = oip.decode_infer(raw, str(header), CONTRACT)
        assert decoded["x"].tolist() == x.tolist() and decoded["ids"].tolist() == ids.tolist()


@pytest.mark.parametrize(
    "head, arrays, header, message",
    [
        (
            {"inputs": [{"name": "x", "shape": [1, 1], "datatype": "FP32", "parameters": {"binary_data_size": 8}}]},
            [np.zeros(1, np.float32)],
            True,
            "binary_data_size 8",
        ),
        ({"inputs": [{"name": "x", "shape": [1, 1], "datatype": "FP64", "data": [1.0]}]}, [], False, "input 'x' is FP32"),
        ({"inputs": [{"name": "z", "shape": [1], "datatype": "FP32", "data": [1.0]}]}, [], False, "unknown input 'z'"),
        ({"inputs": [{"name": "x", "shape": [2, 1], "datatype": "FP32", "data": [1.0]}]}, [], False, "1 values for shape [2, 1]"),
        ({"inputs": [{"name": "x", "shape": [-1], "datatype": "FP32", "data": [1.0]}]}, [], False, "non-negative integers"),
        ({"inputs": []}, [], False, "non-empty list"),
        (
            {"inputs": [{"name": "x", "shape": [1, 1], "datatype": "FP32", "data": [1.0]}], "outputs": [{"name": "q"}]},
            [],
            False,
            "name outputs",
        ),
        (
            {"inputs": [{"name": "x", "shape": [1, 1], "datatype": "FP32", "parameters": {"binary_data_size": 4}}]},
            [np.zeros(2, np.float32)],
            True,
            "no input claims",
        ),
    ],
    ids=["size mismatch", "datatype", "unknown input", "count", "negative shape", "no inputs", "unknown output", "extra bytes"],
)
def test_bad_oip_requests_say_what_is_wrong(head, arrays, header, message):
    raw, length = _binary(head, *arrays)
    with pytest.raises(RequestError, match=message.replace("[", r"\[").replace("]", r"\]")):
        oip.decode_infer(raw, length if header else None, CONTRACT)


X = {"name": "x", "shape": [1, 1], "datatype": "FP32", "data": [1.0]}


@pytest.mark.parametrize(
    "head, message",
    [
        ({"inputs": [{**X, "shape": [1] * 3000}]}, "has 3000 axes; this model's 'x' has 2: [-1, 1]"),  # was a RecursionError
        ({"id": float("nan"), "inputs": [X]}, "NaN is not a number JSON allows"),  # accepted, then failed as it was answered
        ({"id": float("inf"), "inputs": [X]}, "Infinity is not a number JSON allows"),
        ({"id": 7, "inputs": [X]}, '"id" must be a string, got 7'),
        ({"id": ["a"], "inputs": [X]}, '"id" must be a string, got an array'),
        ({"parameters": {"p": float("-inf")}, "inputs": [X]}, "-Infinity is not a number JSON allows"),
        ({"inputs": [{**X, "data": [float("-inf")]}]}, "-Infinity is not a number JSON allows"),
        ({"parameters": [1], "inputs": [X]}, '"parameters" must be an object, got an array'),
        ({"parameters": {"p": {"q": 1}}, "inputs": [X]}, "parameter 'p' must be a boolean, a number or a string, got an object"),
        ({"parameters": {"binary_data_output": "yes"}, "inputs": [X]}, "'binary_data_output' must be true or false"),
        ({"inputs": [{**X, "parameters": [1]}]}, "input 'x': \"parameters\" must be an object"),
        ({"inputs": [X], "outputs": [{"name": "y", "parameters": {"binary_data": 1}}]}, "output 'y': parameter 'binary_data' must be true"),
        ({"inputs": [{**X, "name": ["x"]}]}, "each input's name must be a string, got an array"),  # was unhashable: a 500
    ],
    ids=[
        "3000 axes",
        "NaN id",
        "Infinity id",
        "number id",
        "array id",
        "-Infinity parameter",
        "-Infinity data",
        "parameters array",
        "nested parameter",
        "string flag",
        "input parameters array",
        "number flag",
        "array name",
    ],
)
def test_odd_json_is_refused_with_what_is_wrong(head, message):
    """Each of these was a 500, or an answer that could not be encoded; each must be a RequestError (a 400)."""
    with pytest.raises(RequestError, match=re.escape(message)):
        oip.decode_infer(json.dumps(head).encode(), None, CONTRACT)


@pytest.mark.parametrize("where", ["inputs", "parameters", "id"])
def test_json_nested_too_deeply_is_refused(where):
    deep = "[" * 100_000 + "]" * 100_000  # 200 kB, within the body cap
    raw = f'{{"{where}": {deep}}}'.encode()
    with pytest.raises(RequestError, match="JSON nested too deeply"):
        oip.decode_infer(raw, None, CONTRACT)


def test_a_header_length_beyond_the_body_is_refused():
    with pytest.raises(RequestError, match="the body has 2 bytes"):
        oip.decode_infer(b"{}", "10", CONTRACT)


def test_answers_are_oip_tensors_json_or_binary():
    answer = {"y": [3.0, 5.0]}  # the contract's JSON answer for two rows
    body, length = oip.encode_infer(answer, {"id": None, "binary": {"y": False}}, CONTRACT, "0123456789ab")
    assert json.loads(body)["model_version"] == "0123456789ab"
    assert length is None and json.loads(body)["outputs"] == [{"name": "y", "datatype": "FP32", "shape": [2, 1], "data": [3.0, 5.0]}]
    body, length = oip.encode_infer(answer, {"id": "a", "binary": {"y": True}}, CONTRACT, "v")
    head = json.loads(body[:length])
    assert head["id"] == "a" and head["outputs"][0]["parameters"] == {"binary_data_size": 8}
    np.testing.assert_array_equal(np.frombuffer(body[length:], np.float32), [3.0, 5.0])
    one, _ = oip.encode_infer({"y": 11.0}, {"id": None, "binary": {"y": False}}, CONTRACT, "v")  # a single row
    assert json.loads(one)["outputs"][0]["shape"] == [1, 1]


# --- options, the archive and the token ------------------------------------------------------


def _options(**kw) -> dict:
    return {"archive": "a.mar", "sha256": "0" * 64, "token_file": "k.json", **kw}


@pytest.mark.parametrize(
    "kw, message",
    [
        ({"replica": 2}, "unknown Ray application option"),
        ({"replicas": "many"}, "positive integer or 'auto'"),
        ({"replicas": 0}, "at least 1"),
        ({"min_replicas": 3, "max_replicas": 2}, "min_replicas"),
        ({"body_timeout_s": 0}, "body_timeout_s must be over 0"),
        ({"body_idle_s": 20}, "body_idle_s must be over 0 and at most body_timeout_s"),
        ({"max_queued_requests": 0}, "max_queued_requests must be at least 1"),
    ],
)
def test_bad_options_are_refused(kw, message):
    with pytest.raises(PipelineError, match=message):
        RayAppOptions.from_args(_options(**kw))


def test_missing_options_are_named():
    with pytest.raises(PipelineError, match="sha256"):
        RayAppOptions.from_args({"archive": "a.mar", "token_file": "k"})


def test_replicas_or_autoscaling():
    fixed = deployment_options(RayAppOptions.from_args(_options(replicas="2")))
    assert fixed["num_replicas"] == 2 and "autoscaling_config" not in fixed
    auto = deployment_options(RayAppOptions.from_args(_options(replicas="auto", min_replicas=1, max_replicas=3)))
    assert auto["autoscaling_config"] == {"min_replicas": 1, "max_replicas": 3, "target_ongoing_requests": 8}
    assert auto["max_ongoing_requests"] >= 16  # at least twice any batch the archive declares by default
    sized = deployment_options(RayAppOptions.from_args(_options(batch_size=32)))
    assert sized["max_ongoing_requests"] >= 32
    # Past this many waiting at the proxy, Serve answers 503 at once instead of holding (and buffering) more.
    assert fixed["max_queued_requests"] == auto["max_queued_requests"] == 64
    assert deployment_options(RayAppOptions.from_args(_options(max_queued_requests=8)))["max_queued_requests"] == 8


def test_archive_with_another_hash_is_refused(built_root, tmp_path):
    mar = built_root / "model_store" / "simple_nn.mar"
    with pytest.raises(IntegrityError, match="not the verified archive"):
        fetch_archive(str(mar), "0" * 64, tmp_path)
    good = hashlib.sha256(mar.read_bytes()).hexdigest()
    assert fetch_archive(mar.as_uri(), good, tmp_path).read_bytes() == mar.read_bytes()


def test_archive_that_is_not_there_is_explained(tmp_path):
    with pytest.raises(PipelineError, match="cannot read the archive"):
        fetch_archive(str(tmp_path / "missing.mar"), "0" * 64, tmp_path)


def test_tampered_archive_with_a_matching_hash_is_still_inspected(built_root, tmp_path):
    """A hash pins the bytes; the members are checked as every server checks them."""
    evil = tmp_path / "evil.mar"
    with zipfile.ZipFile(evil, "w") as zf:
        zf.writestr("../escape.txt", "x")
    options = RayAppOptions.from_args(_options(archive=str(evil), sha256=hashlib.sha256(evil.read_bytes()).hexdigest()))
    (tmp_path / "work").mkdir()
    with pytest.raises(IntegrityError, match="unsafe paths"):
        load(options, tmp_path / "work")


def test_cuda_replica_gets_the_contracts_precision(built_root, tmp_path, monkeypatch):
    """A replica given a GPU makes the session the handler would: CUDA, the contract's precision."""
    from pipeline.runtimes.session import SessionConfig
    from pipeline.serving.common import predictor

    seen = []
    real = predictor.create_session
    monkeypatch.setattr(predictor, "create_session", lambda path, config: seen.append(config) or real(path, SessionConfig("cpu")))
    monkeypatch.setattr(predictor, "cuda_provider_available", lambda: True)
    mar = built_root / "model_store" / "simple_nn.mar"
    options = RayAppOptions.from_args(_options(archive=str(mar), sha256=hashlib.sha256(mar.read_bytes()).hexdigest()))
    load(options, tmp_path, gpu_id=0)
    assert (seen[-1].device, seen[-1].gpu_id, seen[-1].precision) == ("cuda", 0, "fp32")


@pytest.mark.parametrize(
    "mode, content, message",
    [
        (0o644, {"inference": {"key": "k" * 32}}, "open to other users"),
        (0o600, {"inference": {"key": "short"}}, "too short"),
        (0o600, {"other": 1}, "cannot read the token"),
    ],
)
def test_token_file_is_checked(tmp_path, mode, content, message):
    path = tmp_path / "key_file.json"
    path.write_text(json.dumps(content))
    path.chmod(mode)
    with pytest.raises(PipelineError, match=message):
        read_token(str(path))


def test_serving_on_ray_without_ray_installed_says_how_to_get_it(built, monkeypatch):
    import importlib.util

    from pipeline.serving.ray import server as ray_server

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name.startswith("ray") else real(name, *a))
    settings, layout = built
    with pytest.raises(PipelineError, match=r"Ray Serve is not installed") as raised:
        ray_server.start(settings, auto_ports=True)
    assert "pip install" in raised.value.fix
    assert not ray_server.run_dir(layout).exists()  # nothing was started or written


LIMITED = Contract(
    {
        "model": "m",
        "inputs": [{"name": "ids", "dtype": "int64", "shape": ["batch", "seq"]}],
        "outputs": [{"name": "y", "dtype": "float32", "shape": ["batch", 1]}],
        "max_rows_per_request": 8,
        "max_lengths": {"seq": 512},
    }
)


@pytest.mark.parametrize(
    "shape, message",
    [([1, 600], "'ids' is 600 long along 'seq'; this model takes at most 512"), ([9, 2], "'ids' has 9 rows; at most 8")],
    ids=["too long", "too many rows"],
)
@pytest.mark.parametrize("binary", [False, True])
def test_the_declared_shape_is_checked_before_any_data_is_read(shape, message, binary):
    """The same refusal as the JSON route, from the tensor's declared shape: no data (here none at all) is read or allocated."""
    tensor = {"name": "ids", "shape": shape, "datatype": "INT64"}
    if binary:
        tensor["parameters"] = {"binary_data_size": 8 * shape[0] * shape[1]}
    else:
        tensor["data"] = []
    raw, length = _binary({"inputs": [tensor]})
    with pytest.raises(RequestError, match=message):
        oip.decode_infer(raw, length if binary else None, LIMITED)


def test_a_shape_within_the_limits_still_decodes():
    raw = json.dumps({"inputs": [{"name": "ids", "shape": [1, 512], "datatype": "INT64", "data": [1] * 512}]}).encode()
    body, _ = oip.decode_infer(raw, None, LIMITED)
    assert LIMITED.parse(body)[0]["ids"].shape == (1, 512)


@pytest.mark.parametrize(
    "contract, shape, message",
    [
        (CONTRACT, [2**32, 2**32, 1], "has 3 axes; this model's 'x' has 2"),
        (CONTRACT, [2**64, 1], "has 18446744073709551616 rows; at most 8"),
        (LIMITED, [1, 0], "holds no values"),
    ],
    ids=["int64 overflow", "rows past int64", "empty"],
)
def test_a_hostile_shape_costs_nothing(contract, shape, message):
    """np.prod wrapped [2**32, 2**32, 1] around to 0 values, which 0 bytes of data matched; nesting nothing
    into [2**22, 0, 0] built 2**22 lists. The shape alone is refused: its rank, its rows, its values."""
    name = contract.inputs[0]["name"]
    dtype = oip.datatype(contract.inputs[0]["dtype"])
    raw, length = _binary({"inputs": [{"name": name, "shape": shape, "datatype": dtype, "parameters": {"binary_data_size": 0}}]})
    with pytest.raises(RequestError, match=re.escape(message)):
        oip.decode_infer(raw, length, contract)


IMAGE = Contract(
    {
        "model": "m",
        "inputs": [{"name": "image", "dtype": "float32", "shape": ["batch", 3, 8]}],
        "outputs": [{"name": "y", "dtype": "float32", "shape": ["batch", 1]}],
        "max_rows_per_request": 8,
    }
)


@pytest.mark.parametrize(
    "shape, data, message",
    [
        ([20_000_000, 1], [], "has 2 axes; this model's 'image' has 3: [-1, 3, 8]"),  # the attack: 78 bytes, 13 s and 2.2 GB
        ([40_000_000], [], "has 1 axes"),  # killed the worker
        ([20_000_000, 3, 8], [], "has 20000000 rows; at most 8"),
        ([1, 3, 8], [], "has 0 values for shape [1, 3, 8] (24)"),  # no data for a shape that holds some
        ([1, 3, 8], [1.0] * 23, "has 23 values for shape [1, 3, 8] (24)"),
        ([1, 3, 8], [[[1.0] * 8] * 3] * 2, "has 48 values for shape [1, 3, 8] (24)"),  # nested, as OIP allows, but too many
        ([1, 4, 8], [1.0] * 32, "is 4 long on axis 1; this model's 'image' takes 3 there"),
    ],
    ids=["fewer axes, no data", "one axis", "too many rows", "no data", "too few values", "nested too many", "fixed axis"],
)
@pytest.mark.parametrize("binary", [False, True])
def test_a_shape_is_checked_against_the_contract_whatever_its_rank(shape, data, message, binary):
    """Every limit is checked from the declared shape, for any number of axes, before data is read or
    anything allocated: a refusal within a second and a few kB, not seconds and gigabytes."""
    import time
    import tracemalloc

    tensor: dict = {"name": "image", "shape": shape, "datatype": "FP32"}
    arrays = []
    if binary:
        flat = np.asarray(data, np.float32).reshape(-1)
        tensor["parameters"] = {"binary_data_size": flat.nbytes}
        arrays = [flat]
        message = message if "values for shape" not in message else "does not match shape"
    else:
        tensor["data"] = data
    raw, length = _binary({"inputs": [tensor]}, *arrays)
    tracemalloc.start()
    started = time.perf_counter()
    try:
        with pytest.raises(RequestError, match=re.escape(message)):
            oip.decode_infer(raw, length if binary else None, IMAGE)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert time.perf_counter() - started < 1.0 and peak < 1 << 20


@pytest.mark.parametrize("binary", [False, True])
def test_a_full_shape_with_its_data_still_decodes(binary):
    x = np.arange(48, dtype=np.float32).reshape(2, 3, 8)
    if binary:
        raw, length = oip.encode_request({"image": x})
        body, _ = oip.decode_infer(raw, str(length), IMAGE)
    else:
        for data in (x.reshape(-1).tolist(), x.tolist()):  # flat or nested, as OIP allows
            raw = json.dumps({"inputs": [{"name": "image", "shape": [2, 3, 8], "datatype": "FP32", "data": data}]}).encode()
            body, _ = oip.decode_infer(raw, None, IMAGE)
    np.testing.assert_array_equal(IMAGE.parse(body)[0]["image"], x)


class _StalledRequest:
    """A Starlette request that declares a body and sends `chunks`, then nothing."""

    def __init__(self, chunks: list[bytes]):
        self.headers = {"content-length": "1000"}
        self.chunks = chunks

    async def stream(self):
        for chunk in self.chunks:
            yield chunk
        await asyncio.sleep(3600)
        yield b""


@pytest.mark.parametrize("chunks", [[], [b"{"]], ids=["nothing sent", "stopped"])
def test_a_body_that_stops_is_a_408_after_body_idle_s(chunks):
    """An authenticated client that declared a body and sent none held a replica slot for body_timeout_s (10 s)."""
    import time

    from pipeline.serving.ray.app import ModelServer

    server = object.__new__(ModelServer)  # its body reading only: no Ray, no model
    server.options = RayAppOptions.from_args(_options(body_idle_s=0.2, body_timeout_s=10))
    server.max_request_bytes = 1 << 20
    started = time.perf_counter()
    with pytest.raises(RequestError, match="no part of the request body arrived for 0.2 s") as raised:
        asyncio.run(server._body(_StalledRequest(chunks)))
    assert raised.value.code == 408 and time.perf_counter() - started < 1.0
