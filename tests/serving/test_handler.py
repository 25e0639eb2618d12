"""The TorchServe handler without a server: the real archive, a small fake context."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest

from pipeline.runtimes.runners import cuda_available
from pipeline.serving.common.contract import DEFAULT_MAX_ELEMENTS, DEFAULT_MAX_LENGTH, Contract, RequestError, declare
from tests.helpers import FakeContext, archive_handler


@pytest.fixture(scope="module")
def served(built_root, tmp_path_factory):
    """The handler module loaded from the extracted archive, initialised."""
    model_dir = tmp_path_factory.mktemp("model_dir")
    module, _ = archive_handler(built_root / "model_store" / "simple_nn.mar", model_dir)
    return module, model_dir


def call(served, *bodies):
    module, model_dir = served
    ctx = FakeContext(model_dir)
    out = module.handle([{"body": b} for b in bodies], ctx)
    return [(ctx.status.get(i, (200, ""))[0], json.loads(r)) for i, r in enumerate(out)], ctx


def test_scalar_in_scalar_out(served):
    [(code, body)], ctx = call(served, {"x": 5.0})
    assert code == 200 and abs(body["y"] - 11.0) < 0.05
    assert ctx.content_type[0] == "application/json"


def test_list_in_list_out(served):
    [(code, body)], _ = call(served, {"x": [1.0, 2.0, 3.0]})
    assert code == 200 and len(body["y"]) == 3
    assert body["y"] == pytest.approx([3.0, 5.0, 7.0], abs=0.05)


def test_rows_form_and_raw_bytes(served):
    [(code, body)], _ = call(served, b'{"x": [[4.0], [0.5]]}')
    assert code == 200 and body["y"] == pytest.approx([9.0, 2.0], abs=0.05)  # outputs use the short row form


@pytest.mark.parametrize(
    "body, message",
    [
        (b"{not json", "malformed JSON"),
        (b"", "empty body"),
        (b"\xff\xfe", "not valid UTF-8"),
        ({"z": 1.0}, "unknown field"),
        ({}, "missing field"),
        ({"x": "5"}, "must hold numbers, found a string"),
        ({"x": True}, "must hold numbers, found a boolean"),
        ({"x": {"a": 1}}, "must hold numbers, found a object"),
        ({"x": None}, "must hold numbers, found a null"),
        ({"x": []}, "empty list"),
        ({"x": [[1.0, 2.0]]}, "has shape"),
        ({"x": [[1.0], 2.0]}, "ragged"),
        (b'{"x": NaN}', "not a number JSON allows"),
        ({"x": float("inf")}, "only finite numbers"),
        ({"x": 1e300}, "too large for float32"),
        ({"x": [0.0] * 5000}, "at most 4096"),
        ([1, 2], "JSON object"),
    ],
)
def test_bad_input_gets_400_with_message(served, body, message):
    [(code, answer)], ctx = call(served, body)
    assert code == 400
    assert answer["code"] == 400 and message in answer["error"]
    assert ctx.content_type[0] == "application/json"


def test_one_bad_request_in_a_batch_fails_alone(served):
    results, _ = call(served, {"x": 1.0}, {"x": "bad"}, {"x": [2.0, 3.0]}, b"{")
    codes = [c for c, _ in results]
    assert codes == [200, 400, 200, 400]
    assert results[0][1]["y"] == pytest.approx(3.0, abs=0.05)
    assert results[2][1]["y"] == pytest.approx([5.0, 7.0], abs=0.05)


def _spy_sessions(monkeypatch) -> list:
    """Record the SessionConfig the handler asks for; run a CPU session so no GPU is needed."""
    from pipeline.runtimes.session import SessionConfig
    from pipeline.serving.common import predictor as predictor_module

    seen: list = []
    real = predictor_module.create_session

    def spy(path, config):
        seen.append(config)
        return real(path, SessionConfig("cpu"))

    monkeypatch.setattr(predictor_module, "create_session", spy)
    monkeypatch.setattr(predictor_module, "cuda_provider_available", lambda: True)
    return seen


@pytest.mark.parametrize("precision", ["fp32", "tf32"])
def test_a_gpu_worker_gets_the_contracts_precision(built_root, tmp_path, monkeypatch, precision):
    """The provider options the archive's contract declares reach the handler's CUDA session."""
    from pipeline.serving.torchserve.handler import OnnxHandler

    seen = _spy_sessions(monkeypatch)
    archive_handler(built_root / "model_store" / "simple_nn.mar", tmp_path)  # unpacks it
    contract = json.loads((tmp_path / "io_contract.json").read_text())
    assert contract["cuda_precision"] == "fp32"  # what parity verified by default
    contract["cuda_precision"] = precision
    (tmp_path / "io_contract.json").write_text(json.dumps(contract))
    handler = OnnxHandler()
    handler(None, FakeContext(tmp_path, gpu_id=2))
    config = seen[-1]
    assert (config.device, config.precision, config.gpu_id) == ("cuda", precision, 2)
    assert config.cuda_options()["use_tf32"] == ("1" if precision == "tf32" else "0")


def test_a_cpu_worker_gets_a_cpu_session(built_root, tmp_path, monkeypatch):
    seen = _spy_sessions(monkeypatch)
    archive_handler(built_root / "model_store" / "simple_nn.mar", tmp_path)
    assert seen[-1].device == "cpu"


@pytest.mark.cuda
@pytest.mark.skipif(not cuda_available(), reason="needs a CUDA GPU")
def test_handler_on_a_gpu_worker_runs_on_cuda_and_answers(built_root, tmp_path):
    module, ctx = archive_handler(built_root / "model_store" / "simple_nn.mar", tmp_path, gpu_id=0)
    assert module.handle.provider == "CUDAExecutionProvider"
    [raw] = module.handle([{"body": b'{"x": [1.0, 2.0, 3.0]}'}], ctx)
    assert json.loads(raw)["y"] == pytest.approx([3.0, 5.0, 7.0], abs=0.05)


@pytest.mark.parametrize(
    "value, ok",
    [(True, True), ([True, False], True), ([1, 0], True), (0.5, False), (2, False), ("true", False), (None, False)],
)
def test_bool_inputs_take_true_false_or_0_1_and_nothing_else(value, ok):
    from pipeline.serving.common.contract import Contract, RequestError

    contract = Contract(
        {"model": "m", "inputs": [{"name": "flag", "dtype": "bool", "shape": ["batch"]}], "outputs": [], "max_rows_per_request": 8}
    )
    if ok:
        feed, _ = contract.parse({"flag": value})
        assert feed["flag"].dtype == bool and feed["flag"].tolist() == [bool(v) for v in np.atleast_1d(value)]
    else:
        with pytest.raises(RequestError, match="must hold true or false"):
            contract.parse({"flag": value})


def test_numeric_inputs_still_refuse_booleans():
    from pipeline.serving.common.contract import Contract, RequestError

    contract = Contract(
        {"model": "m", "inputs": [{"name": "x", "dtype": "float32", "shape": ["batch"]}], "outputs": [], "max_rows_per_request": 8}
    )
    with pytest.raises(RequestError, match="must hold numbers, found a boolean"):
        contract.parse({"x": True})


def test_torchserve_per_batch_log_line_is_dropped_and_others_kept():
    import logging

    from pipeline.serving.torchserve.handler import PER_BATCH_LINE, drop_per_batch_line

    def record(msg, *args):
        return logging.LogRecord("root", logging.INFO, __file__, 1, msg, args, None)

    assert not drop_per_batch_line(record(PER_BATCH_LINE, 1_700_000_000))
    assert drop_per_batch_line(record("model %s: ONNX Runtime %s on %s (%s)", "m", "1.31", "CPU", "{}"))
    # the line TorchServe's worker writes, word for word
    from ts.protocol import otf_message_handler

    assert PER_BATCH_LINE in Path(otf_message_handler.__file__).read_text()


# --- answers of real size, sequences past the model's positions ------------------------------

WIDTH = 256  # each token answers a row of WIDTH floats: token / 3, about 19 bytes each as JSON
WIDE = {
    "model": "wide",
    "inputs": [{"name": "tokens", "dtype": "int64", "shape": ["batch", "seq"], "low": 0, "high": 3}],
    "outputs": [{"name": "wide", "dtype": "float32", "shape": ["batch", "seq", WIDTH]}],
    "max_rows_per_request": 8,
    "max_lengths": {"seq": 64},
    "max_request_bytes": 1 << 20,
    "max_response_bytes": 100_000,  # about 20 tokens' answer
    "max_batch_response_bytes": 150_000,
    "cuda_precision": "fp32",
}


def _wide_onnx(path: Path) -> None:
    """tokens [batch, seq] -> a table lookup [batch, seq, WIDTH] whose row t is t / 3."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    table = numpy_helper.from_array(np.repeat(np.arange(4, dtype=np.float32)[:, None] / 3, WIDTH, axis=1), "table")
    graph = helper.make_graph(
        [helper.make_node("Gather", ["table", "tokens"], ["wide"], axis=0)],
        "wide",
        [helper.make_tensor_value_info("tokens", TensorProto.INT64, ["batch", "seq"])],
        [helper.make_tensor_value_info("wide", TensorProto.FLOAT, ["batch", "seq", WIDTH])],
        [table],
    )
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8), path)


@pytest.fixture
def wide(tmp_path):
    """A handler for a model with large answers, initialised as TorchServe would, with the session's calls counted."""
    from pipeline.serving.torchserve.handler import OnnxHandler

    (tmp_path / "io_contract.json").write_text(json.dumps(WIDE))
    _wide_onnx(tmp_path / "model.onnx")
    handler = OnnxHandler()
    handler(None, FakeContext(tmp_path))
    runs: list[dict] = []
    session = handler.predictor.session
    real = session.run

    class Counted:  # the ONNX Runtime session, counting its calls
        def __getattr__(self, name):
            return getattr(session, name)

        def run(self, names, feed):
            runs.append({k: v.shape for k, v in feed.items()})
            return real(names, feed)

    handler.predictor.session = Counted()
    return handler, tmp_path, runs


def call_wide(wide, *bodies):
    handler, model_dir, _ = wide
    ctx = FakeContext(model_dir)
    out = handler.handle([{"body": json.dumps(b).encode()} for b in bodies], ctx)
    return [(ctx.status.get(i, (200, ""))[0], json.loads(r), len(r)) for i, r in enumerate(out)], ctx


def test_an_answer_over_the_limit_is_a_413_for_that_request_alone(wide):
    """TorchServe's frontend drops the worker, and the whole batch, for an answer over its frame limit: refuse it first."""
    results, ctx = call_wide(wide, {"tokens": [1] * 30}, {"tokens": [1, 2]}, {"tokens": "one"})
    assert [code for code, _, _ in results] == [413, 200, 400]
    (_, refused, _), (_, answered, size), _ = results
    assert refused["code"] == 413 and "over this model's 100000" in refused["error"] and "max_response_bytes" in refused["error"]
    assert "fewer rows or a shorter 'seq'" in refused["error"]  # what to do
    assert size <= WIDE["max_response_bytes"]
    np.testing.assert_allclose(answered["wide"], [[1 / 3] * WIDTH, [2 / 3] * WIDTH], rtol=1e-6)
    assert ctx.status[0] == (413, "Request Entity Too Large")
    assert set(ctx.content_type.values()) == {"application/json"} and len(ctx.content_type) == 3


def test_answers_past_the_batch_budget_are_503s_to_retry_and_the_rest_are_answered(wide):
    """The frontend holds a batch's answers together: past max_batch_response_bytes, the ones that do not fit are sent back."""
    results, _ = call_wide(wide, *[{"tokens": [1] * 10} for _ in range(4)])
    sizes = [size for code, _, size in results if code == 200]
    assert [code for code, _, _ in results] == [200, 200, 200, 503]
    assert sum(sizes) <= WIDE["max_batch_response_bytes"] < sum(sizes) + sizes[0]
    assert "send the request again" in results[3][1]["error"] and "150000" in results[3][1]["error"]


def test_a_lone_answer_within_its_limit_always_goes_whatever_the_batch_budget():
    """A budget below one answer (a hand-written contract) must not refuse that answer forever."""
    from pipeline.serving.common.predictor import Answer
    from pipeline.serving.torchserve.handler import fit_batch

    big, error = Answer(200, b"x" * 100), Answer.error(400, "bad")
    assert [a.status for a in fit_batch([error, big, big], budget=50)] == [400, 200, 503]


def test_a_sequence_past_max_lengths_is_a_400_before_onnx_runtime_runs(wide):
    """BERT at 600 tokens was a 503 after 4 s in ONNX Runtime; the contract knows its 512 positions."""
    handler, _, runs = wide
    results, _ = call_wide(wide, {"tokens": [1] * 65}, {"tokens": [[1] * 65, [2] * 65]}, {"tokens": [1] * 64})
    assert [code for code, _, _ in results] == [400, 400, 413]  # 64 tokens are allowed (and answer too much)
    for _, answer, _ in results[:2]:
        assert "'tokens' is 65 long along 'seq'; this model takes at most 64" in answer["error"]
    assert runs == [{"tokens": (1, 64)}]  # only the allowed one reached the session


def test_the_length_is_checked_before_the_values_are_read():
    """A hostile body costs no conversion past the limit: the length is read from the lists themselves."""
    from pipeline.serving.common.contract import Contract, RequestError

    contract = Contract(WIDE)
    with pytest.raises(RequestError, match="65 long along 'seq'"):
        contract.parse({"tokens": [0] * 64 + ["not a number"]})  # the bad value is never looked at
    with pytest.raises(RequestError, match="9 rows; at most 8"):
        contract.parse({"tokens": [[0]] * 8 + [["x"]]})
    with pytest.raises(RequestError, match="found a string"):
        contract.parse({"tokens": [0] * 63 + ["x"]})  # within the limit, the values are checked as before


def test_the_contract_declares_its_limits_and_keeps_large_examples_out():
    """What the package stage writes into io_contract.json: max_lengths, the size caps, the example while it is small."""
    from pipeline.models import load_spec
    from pipeline.serving.common.contract import EXAMPLE_MAX_BYTES, MAX_BATCH_RESPONSE_BYTES, MAX_RESPONSE_BYTES, Contract
    from pipeline.spec import TensorSpec

    spec = load_spec("seq_encoder")
    bert_like = declare(dataclasses.replace(spec, max_lengths={"seq": 512}))
    assert bert_like["max_lengths"] == {"seq": 512} and bert_like["example_request"] == spec.example_request
    assert (bert_like["max_request_bytes"], bert_like["max_response_bytes"]) == (1 << 20, MAX_RESPONSE_BYTES)
    assert bert_like["max_batch_response_bytes"] == MAX_BATCH_RESPONSE_BYTES >= MAX_RESPONSE_BYTES
    image = dataclasses.replace(
        spec,
        inputs=(TensorSpec("image", "float32", ("batch", 3, 224, 224)),),
        example_request={"image": np.zeros((3, 224, 224)).tolist()},  # 2.3 MB of JSON: mobilenet's archive was refused
    )
    contract = declare(image)
    assert "example_request" not in contract and len(json.dumps(contract)) < EXAMPLE_MAX_BYTES
    # A full-precision 224 x 224 image as JSON is about 3 MB: the cap is what one such row needs, not more.
    assert contract["max_request_bytes"] == 4 << 20
    assert Contract(contract).example == '{"image": <an array of shape [3, 224, 224]>}'  # what an empty body's error suggests


def test_an_archive_without_declared_limits_gets_the_defaults():
    from pipeline.serving.common.contract import MAX_RESPONSE_BYTES, Contract

    old = {k: v for k, v in WIDE.items() if not k.startswith("max_") or k == "max_rows_per_request"}
    contract = Contract(old)
    assert (contract.max_request_bytes, contract.max_response_bytes) == (1 << 20, MAX_RESPONSE_BYTES)
    assert (contract.max_lengths, contract.max_elements) == ({"seq": DEFAULT_MAX_LENGTH}, DEFAULT_MAX_ELEMENTS)
    assert contract.parse({"tokens": [1] * 1000})[0]["tokens"].shape == (1, 1000)
    with pytest.raises(RequestError, match=f"at most {DEFAULT_MAX_LENGTH}"):  # no length declared: still bounded
        contract.parse({"tokens": [1] * (DEFAULT_MAX_LENGTH + 1)})


def test_an_attention_model_s_request_is_bounded_along_every_axis_and_in_elements():
    """One row of 16,000 tokens took 6.1 GB in seq_encoder (attention is quadratic): refused from its
    length, and many rows of allowed length from their element count, before anything is converted."""
    from pipeline.models import load_spec

    spec = load_spec("seq_encoder")
    declared = declare(spec)
    assert declared["max_lengths"] == {"seq": 1024} and declared["max_elements_per_request"] == 16384
    contract = Contract(declared)
    with pytest.raises(RequestError, match="16000 long along 'seq'; this model takes at most 1024"):
        contract.parse({"tokens": [1] * 16000})
    with pytest.raises(RequestError, match="17,408 elements in this request; this model takes at most 16,384"):
        contract.parse({"tokens": [[1] * 1024] * 17})
    assert contract.parse({"tokens": [[1] * 1024] * 16})[0]["tokens"].shape == (16, 1024)
    with pytest.raises(RequestError, match="at most 16,384 per request"):  # a declared shape (OIP) is checked the same way
        contract.check_extent("tokens", [256, 1000])
    # A spec that declares nothing still gets a cap: 1 Mi elements, or one longest row where that is more.
    plain = Contract(declare(dataclasses.replace(spec, max_lengths={}, max_elements_per_request=None)))
    assert (plain.max_lengths, plain.max_elements) == ({"seq": DEFAULT_MAX_LENGTH}, DEFAULT_MAX_ELEMENTS)
