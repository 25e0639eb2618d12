"""A generation archive served: the TorchServe handler, a real TorchServe, and the Ray replica, each
through the one generation loop; `{"text": ...}` in, transformers' own greedy tokens out."""

from __future__ import annotations

import json

import pytest

from pipeline.artifacts.manifest import Manifest
from pipeline.artifacts.names import MAR
from pipeline.serving.torchserve import server as serve
from pipeline.settings import Settings
from tests.generation.checkpoints import POSITIONS, transformers_greedy
from tests.helpers import archive_handler, needs_java

PROMPTS = ["Hello world!", "The quick brown fox"]


def body(**fields) -> dict:
    return {"body": json.dumps(fields).encode()}


@pytest.fixture(scope="module")
def handler(small_llama, tmp_path_factory):
    _, root = small_llama
    return archive_handler(root / "model_store" / "llama.mar", tmp_path_factory.mktemp("model_dir"))


@pytest.mark.slow
def test_the_handler_generates_transformers_tokens_for_one_prompt_and_a_batch(small_llama, handler):
    folder, _ = small_llama
    module, ctx = handler
    one, many = module.handle([body(text=PROMPTS[0], max_new_tokens=12), body(text=PROMPTS, max_new_tokens=12)], ctx)
    want = transformers_greedy(folder, PROMPTS, 12)
    one, many = json.loads(one), json.loads(many)
    assert one["tokens"] == transformers_greedy(folder, PROMPTS[:1], 12)[0]
    assert [a["tokens"] for a in many] == want  # left-padded together, the same tokens
    assert one["usage"]["completion_tokens"] == len(one["tokens"]) and one["finish_reason"] in ("stop", "length")
    assert ctx.status == {}  # every answer a 200


@pytest.mark.slow
@pytest.mark.parametrize(
    "fields, message",
    [
        ({"text": "Hi", "max_new_tokens": 10_000}, "max_new_tokens is 10000, the model's cap is 256"),
        ({"text": "Hi " * 200, "max_new_tokens": 8}, f"plus max_new_tokens 8 is .* the model's maximum length is {POSITIONS}"),
        ({"text": "x" * 100_000}, "prompt 0 has 100000 characters; at most 768 are read"),
        ({"text": ["a"] * 9}, '"text" has 9 prompts; this model takes 1 to 8'),
        ({"text": "Hi", "temperature": -1}, "temperature is -1"),
        ({"text": "Hi", "stop": 5}, '"stop" must be a non-empty string'),
        ({"text": "Hi", "max_new_tokens": "9"}, "max_new_tokens must be an integer"),
        ({"prompt": "Hi"}, r"unknown field\(s\) \['prompt'\]"),
        ({"input_ids": [1, 2]}, r"unknown field"),
    ],
)
def test_a_bad_request_is_a_400_that_says_what_is_wrong(handler, fields, message):
    import re

    module, ctx = handler
    ctx.status.clear()
    [answer] = module.handle([body(**fields)], ctx)
    assert ctx.status[0][0] == 400
    assert re.search(message, json.loads(answer)["error"]), answer


@pytest.mark.slow
def test_sampling_is_seeded(handler):
    module, ctx = handler
    request = body(text="Hello", max_new_tokens=10, temperature=0.9, top_p=0.9, seed=11)
    first, again = module.handle([request, request], ctx)
    assert json.loads(first)["tokens"] == json.loads(again)["tokens"]


@pytest.mark.slow
def test_the_ray_replica_generates_from_the_verified_archive(small_llama, tmp_path):
    from pipeline.serving.ray import app as ray_app

    folder, root = small_llama
    mar = root / "model_store" / "llama.mar"
    options = ray_app.RayAppOptions(archive=str(mar), sha256=Manifest(root.resolve(), "llama").records[MAR].sha256, token_file="unused")
    predictor, _ = ray_app.load(options, tmp_path)
    [answer] = predictor.answer([body(text=PROMPTS, max_new_tokens=10)])
    assert answer.status == 200
    assert [a["tokens"] for a in json.loads(answer.body)] == transformers_greedy(folder, PROMPTS, 10)


@pytest.mark.slow
@needs_java
def test_torchserve_generates_over_http(small_llama):
    folder, root = small_llama
    settings = Settings(model=f"hf:{folder}", root=root)
    info = serve.start(settings, auto_ports=True)
    try:
        ok = info.predict(json.dumps({"text": PROMPTS[1], "max_new_tokens": 8}).encode(), content_type="application/json")
        refused = info.predict(json.dumps({"text": "Hi", "max_new_tokens": 999}).encode(), content_type="application/json")
    finally:
        serve.stop(settings)
    assert ok[0] == 200, ok
    assert json.loads(ok[1])["tokens"] == transformers_greedy(folder, PROMPTS[1:], 8)[0]
    assert refused[0] == 400 and "the model's cap is 256" in json.loads(refused[1])["error"]
