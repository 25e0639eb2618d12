"""The TorchServe handler without a server: the real archive, a small fake context."""

from __future__ import annotations

import json

import pytest

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
