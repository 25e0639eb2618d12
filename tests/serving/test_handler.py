"""The TorchServe handler without a server: the real archive, a small fake context."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from pipeline.runtimes.runners import cuda_available
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
    from pipeline.serving import predictor as predictor_module

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
    from pipeline.serving.handler import OnnxHandler

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
    from pipeline.serving.contract import Contract, RequestError

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
    from pipeline.serving.contract import Contract, RequestError

    contract = Contract(
        {"model": "m", "inputs": [{"name": "x", "dtype": "float32", "shape": ["batch"]}], "outputs": [], "max_rows_per_request": 8}
    )
    with pytest.raises(RequestError, match="must hold numbers, found a boolean"):
        contract.parse({"x": True})


def test_torchserve_per_batch_log_line_is_dropped_and_others_kept():
    import logging

    from pipeline.serving.handler import PER_BATCH_LINE, drop_per_batch_line

    def record(msg, *args):
        return logging.LogRecord("root", logging.INFO, __file__, 1, msg, args, None)

    assert not drop_per_batch_line(record(PER_BATCH_LINE, 1_700_000_000))
    assert drop_per_batch_line(record("model %s: ONNX Runtime %s on %s (%s)", "m", "1.31", "CPU", "{}"))
    # the line TorchServe's worker writes, word for word
    from ts.protocol import otf_message_handler

    assert PER_BATCH_LINE in Path(otf_message_handler.__file__).read_text()
