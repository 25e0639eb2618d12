"""A generation archive served: the TorchServe handler, a real TorchServe, and the Ray replica, each
through the one generation loop; `{"text": ...}` in, transformers' own greedy tokens out."""

from __future__ import annotations

import concurrent.futures
import json
import time
import urllib.error
import urllib.request

import pytest

from pipeline.artifacts import archive
from pipeline.artifacts.manifest import Manifest
from pipeline.artifacts.names import MAR
from pipeline.serving.common import metrics
from pipeline.serving.common.client import http
from pipeline.serving.torchserve import server as serve
from pipeline.settings import Settings
from pipeline.stages import STAGES
from tests.generation.checkpoints import POSITIONS, transformers_greedy
from tests.helpers import archive_handler, copy_root, needs_java

PROMPTS = ["Hello world!", "The quick brown fox"]


def body(**fields) -> dict:
    return {"body": json.dumps(fields).encode()}


class Frontend:
    """TorchServe 0.12's continuous batching (wlm/ContinuousBatching.java, job/RestJob.java), as the handler meets it.

    Each call hands the worker every open request (a new one with its body, one it holds with
    none) and reads, per request, the stopping criterion the handler set: None answers it
    whole, False sends this piece and keeps it, True sends the last piece.
    """

    def __init__(self, module, ctx, batch: int = 16):
        self.module, self.ctx, self.batch = module, ctx, batch
        self.open: dict[str, dict] = {}  # id -> {"body", "parts", "status", "type", "streamed", "headers"}
        self.order: list[str] = []
        self.calls = 0

    def submit(self, item: dict, headers: dict | None = None) -> str:
        ident = f"req-{len(self.open)}-{self.calls}"
        self.open[ident] = {
            "item": item,
            "parts": [],
            "status": None,
            "type": None,
            "streamed": False,
            "headers": headers or {},
            "done": False,
        }
        self.order.append(ident)
        return ident

    def call(self, gone: set[str] = frozenset()) -> None:
        ids = [i for i in self.order if not self.open[i]["done"] and i not in gone][: self.batch]
        ctx = self.ctx
        ctx.status.clear()
        ctx.content_type.clear()
        ctx.request_ids = dict(enumerate(ids))
        ctx.headers = {idx: self.open[i]["headers"] for idx, i in enumerate(ids)}
        data = [self.open[i]["item"] if not self.open[i]["streamed"] else {} for i in ids]
        out = self.module.handle(data, ctx)
        self.calls += 1
        for idx, ident in enumerate(ids):
            job = self.open[ident]
            end = ctx.stopping_criteria[idx](out[idx])
            if not job["streamed"]:
                job["status"], job["type"] = ctx.status.get(idx, (200, ""))[0], ctx.content_type.get(idx)
            job["parts"].append(out[idx])
            job["streamed"] = end is False or job["streamed"]
            job["done"] = end is not False
        for ident in gone:
            self.open[ident]["done"] = True

    def run(self) -> None:
        while any(not j["done"] for j in self.open.values()):
            self.call()

    def answer(self, ident: str) -> tuple[int, bytes]:
        job = self.open[ident]
        return job["status"], b"".join(job["parts"])


def generate(handler, *items: dict) -> list[tuple[int, bytes]]:
    """Each item's (status, whole answer) through the handler, as TorchServe's continuous batching drives it."""
    module, ctx = handler
    frontend = Frontend(module, ctx)
    ids = [frontend.submit(item) for item in items]
    frontend.run()
    return [frontend.answer(i) for i in ids]


@pytest.fixture(scope="module")
def handler(small_llama, tmp_path_factory):
    _, root = small_llama
    module, ctx = archive_handler(root / "model_store" / "llama.mar", tmp_path_factory.mktemp("model_dir"))
    ctx.get_all_request_header = lambda idx: ctx.headers.get(idx, {})
    return module, ctx


@pytest.mark.slow
def test_the_handler_generates_transformers_tokens_for_one_prompt_and_a_batch(small_llama, handler):
    folder, _ = small_llama
    (s1, one), (s2, many) = generate(handler, body(text=PROMPTS[0], max_new_tokens=12), body(text=PROMPTS, max_new_tokens=12))
    want = transformers_greedy(folder, PROMPTS, 12)
    one, many = json.loads(one), json.loads(many)
    assert (s1, s2) == (200, 200)
    assert one["tokens"] == transformers_greedy(folder, PROMPTS[:1], 12)[0]
    assert [a["tokens"] for a in many] == want  # each row decoded in the shared batch, the same tokens
    assert one["usage"]["completion_tokens"] == len(one["tokens"]) and one["finish_reason"] in ("stop", "length")


@pytest.mark.slow
def test_requests_join_between_steps_and_each_streams_its_own_tokens(small_llama, handler):
    """A request that arrives while another is generating joins the batch at the next step; each stream's
    events add up to its own transformers tokens, and a stream is sent as TorchServe's pieces."""
    folder, _ = small_llama
    module, ctx = handler
    recorded = module.handle.recorder
    labels = frozenset({("model", recorded.model), ("version", recorded.version)})
    before = metrics.samples(metrics.exposition())
    frontend = Frontend(module, ctx)
    first = frontend.submit(body(text=PROMPTS[0], max_new_tokens=20, stream=True))
    for _ in range(5):
        frontend.call()
    second = frontend.submit(body(text=PROMPTS[1], max_new_tokens=20, stream=True))
    frontend.run()
    for ident, prompt in ((first, PROMPTS[0]), (second, PROMPTS[1])):
        status, raw = frontend.answer(ident)
        events = [line[6:] for line in raw.decode().splitlines() if line.startswith("data: ")]
        assert status == 200 and frontend.open[ident]["type"] == "text/event-stream" and events[-1] == "[DONE]"
        assert json.loads(events[-2])["tokens"] == transformers_greedy(folder, [prompt], 20)[0]
        assert len(frontend.open[ident]["parts"]) > 10  # sent piece by piece
    assert frontend.calls < 40  # the two shared steps
    # The server's metrics: both requests, every token they were sent, each one's first token, none left in flight.
    after = metrics.samples(metrics.exposition())

    def grew(name: str, extra: frozenset = frozenset()) -> float:
        return after.get((name, labels | extra), 0) - before.get((name, labels | extra), 0)

    tokens = sum(len(transformers_greedy(folder, [p], 20)[0]) for p in PROMPTS[:2])
    assert grew("pipeline_requests_total", frozenset({("code", "200")})) == 2
    assert grew("pipeline_generated_tokens_total") == tokens
    assert grew("pipeline_time_to_first_token_seconds_count") == 2 and grew("pipeline_request_duration_seconds_count") == 2
    assert after[("pipeline_requests_in_flight", labels)] == 0
    assert recorded.version == archive.inspect_archive(small_llama[1] / "model_store" / "llama.mar")["version"]


@pytest.mark.slow
def test_a_request_whose_client_left_is_dropped_at_the_next_step(handler):
    module, ctx = handler
    frontend = Frontend(module, ctx)
    left = frontend.submit(body(text=PROMPTS[0], max_new_tokens=50, stream=True))
    stays = frontend.submit(body(text=PROMPTS[1], max_new_tokens=50, stream=True))
    frontend.call()
    frontend.call()
    predictor = module.handle.predictor
    assert set(predictor.jobs) == {left, stays}
    frontend.call(gone={left})  # TorchServe no longer hands it over: its connection closed
    assert set(predictor.jobs) == {stays} and len(predictor.batcher.active) == 1
    frontend.run()


@pytest.mark.slow
@pytest.mark.parametrize(
    "fields, message",
    [
        ({"text": "Hi", "max_new_tokens": 10_000}, "max_new_tokens is 10000, the model's cap is 256"),
        ({"text": "Hi " * POSITIONS, "max_new_tokens": 8}, f"plus max_new_tokens 8 is .* the model's maximum length is {POSITIONS}"),
        ({"text": "x" * 100_000}, f"prompt 0 has 100000 characters; at most {POSITIONS * 8} are read"),
        ({"text": ["a"] * 9}, '"text" has 9 prompts; this model takes 1 to 8'),
        ({"text": "Hi", "temperature": -1}, "temperature is -1"),
        ({"text": "Hi", "stop": 5}, '"stop" must be a non-empty string'),
        ({"text": "Hi", "max_new_tokens": "9"}, "max_new_tokens must be an integer"),
        ({"text": "Hi", "stream": "yes"}, '"stream" must be true or false'),
        ({"prompt": "Hi"}, r"unknown field\(s\) \['prompt'\]"),
        ({"input_ids": [1, 2]}, r"unknown field"),
    ],
)
def test_a_bad_request_is_a_400_that_says_what_is_wrong(handler, fields, message):
    import re

    [(status, answer)] = generate(handler, body(**fields))
    assert status == 400
    assert re.search(message, json.loads(answer)["error"]), answer


@pytest.mark.slow
def test_sampling_is_seeded(handler):
    request = body(text="Hello", max_new_tokens=10, temperature=0.9, top_p=0.9, seed=11)
    (_, first), (_, again) = generate(handler, request, request)
    assert json.loads(first)["tokens"] == json.loads(again)["tokens"]


@pytest.mark.slow
def test_the_ray_replica_generates_from_the_verified_archive(small_llama, tmp_path):
    from pipeline.serving.ray import app as ray_app

    folder, root = small_llama
    mar = root / "model_store" / "llama.mar"
    options = ray_app.RayAppOptions(archive=str(mar), sha256=Manifest(root.resolve(), "llama").records[MAR].sha256, token_file="unused")
    predictor, _, _ = ray_app.load(options, tmp_path)
    [answer] = predictor.answer([body(text=PROMPTS, max_new_tokens=10)])
    assert answer.status == 200
    assert [a["tokens"] for a in json.loads(answer.body)] == transformers_greedy(folder, PROMPTS, 10)


@pytest.mark.slow
@needs_java
def test_torchserve_generates_over_http_and_past_its_queue_says_503_with_retry_after(small_llama, tmp_path):
    """Packaged with --max-streams 1 --max-queued 1 (a copy of the chain): one request generating, one waiting,
    and the third is refused at once with 503 and Retry-After; the first two are answered in full."""
    folder, root = small_llama
    copy = tmp_path / "p"
    copy_root(root, copy)
    settings = Settings(model=f"hf:{folder}", root=copy, serve_max_streams=1, serve_max_queued=1)
    STAGES["package"](settings)
    info = serve.start(settings, auto_ports=True)
    slow = json.dumps({"text": [f"{n} {PROMPTS[1]}" for n in range(8)], "max_new_tokens": 256, "stream": True}).encode()
    try:
        ok = info.predict(json.dumps({"text": PROMPTS[1], "max_new_tokens": 8}).encode(), content_type="application/json")
        with concurrent.futures.ThreadPoolExecutor(2) as pool:
            first = pool.submit(http, "POST", info.predictions_url, slow, info.token(), timeout=60)
            time.sleep(0.1)  # generating (eight rows of 256 tokens take a second or more)
            waiting = pool.submit(http, "POST", info.predictions_url, slow, info.token(), timeout=60)
            time.sleep(0.1)  # in the proxy's queue
            started = time.perf_counter()
            headers = {"Authorization": f"Bearer {info.token()}", "Content-Type": "application/json"}
            refused = urllib.request.Request(info.predictions_url, slow, headers)
            with pytest.raises(urllib.error.HTTPError) as caught:
                urllib.request.urlopen(refused, timeout=30)
            refused_in = time.perf_counter() - started
            answers = [first.result(), waiting.result()]
            generated_in = time.perf_counter() - started
    finally:
        serve.stop(settings)
    assert ok[0] == 200, ok
    assert json.loads(ok[1])["tokens"] == transformers_greedy(folder, PROMPTS[1:], 8)[0]
    assert caught.value.code == 503 and caught.value.headers["Retry-After"] == "1"
    assert refused_in < generated_in / 4, f"refused after {refused_in:.2f} s, the others took {generated_in:.2f} s more"
    assert [status for status, _ in answers] == [200, 200]
    assert all(body.endswith(b"data: [DONE]\r\n\r\n") for _, body in answers)


@pytest.fixture()
def predictor(small_llama, tmp_path):
    """A fresh GenerationPredictor from the verified archive (each test may break it)."""
    from pipeline.serving.ray import app as ray_app

    _, root = small_llama
    options = ray_app.RayAppOptions(
        archive=str(root / "model_store" / "llama.mar"), sha256=Manifest(root.resolve(), "llama").records[MAR].sha256, token_file="unused"
    )
    return ray_app.load(options, tmp_path)[0]


def run_to_end(predictor, ident: str) -> list[bytes]:
    parts = []
    while ident in predictor.jobs:
        data, _ = predictor.step()[ident]
        parts.append(data)
    return parts


@pytest.mark.slow
def test_a_request_past_its_wall_clock_limit_ends_with_an_error_event(predictor):
    job = predictor.open(body(text=PROMPTS[0], max_new_tokens=200, stream=True), ident="slow")
    predictor.step()
    job.deadline = 0  # as if request_timeout_s had passed
    parts = run_to_end(predictor, "slow")
    last = parts[-1].decode()
    assert "ran past its 300 s limit (request_timeout_s)" in last and last.endswith("data: [DONE]\r\n\r\n")
    assert job.status == 504 and not predictor.batcher.active  # its rows left the batch


@pytest.mark.slow
def test_an_engine_failure_mid_stream_ends_every_stream_with_an_error_event(predictor):
    streams = [predictor.open(body(text=p, max_new_tokens=50, stream=True), ident=f"s{i}") for i, p in enumerate(PROMPTS)]
    whole = predictor.open(body(text=PROMPTS[0], max_new_tokens=50), ident="whole")
    predictor.step()
    predictor.engine.session = None  # the next run raises, as a broken session would
    ended = predictor.step()
    assert set(ended) == {"s0", "s1", "whole"} and all(done for _, done in ended.values())
    for job in streams:
        event = ended[job.id][0].decode()
        assert event.startswith('data: {"error":"generation failed: AttributeError') and event.endswith("data: [DONE]\r\n\r\n")
    assert json.loads(ended["whole"][0])["code"] == 500 and whole.status == 500
    assert not predictor.jobs and len(predictor.batcher) == 0


@pytest.mark.slow
def test_the_ray_replica_refuses_past_its_cap_with_503_and_retry_after(predictor):
    import asyncio

    from pipeline.serving.ray.app import Streams

    streams = Streams(predictor, cap=1)
    predictor.open(body(text=PROMPTS[0], max_new_tokens=5), ident="holding")  # the one slot, taken
    refused = asyncio.run(streams.answer(json.dumps({"text": "Hi"}).encode(), "native"))
    assert refused.status_code == 503 and refused.headers["retry-after"] == "1"
    assert "cap; retry shortly" in json.loads(refused.body)["error"]


def test_ray_lets_a_generation_request_run_its_own_wall_clock_limit(small_llama, tmp_path):
    """Serve cuts any request at its request_timeout_s (30 s): a generation archive's streams get their
    contract's limit and a margin, so the model's own limit ends them first, with an error a client reads."""
    from pipeline.serving.ray.app import HTTP_LIMITS, http_limits

    _, root = small_llama
    mar = root / "model_store" / "llama.mar"
    assert http_limits(str(mar)) == {"request_timeout_s": 310.0}
    assert http_limits(f"file://{mar}") == {"request_timeout_s": 310.0}
    assert http_limits("https://example.invalid/llama.mar") == HTTP_LIMITS


@pytest.mark.slow
def test_a_chat_without_max_tokens_gets_the_room_left_within_the_cap(predictor):
    chat = {"model": "llama", "messages": [{"role": "user", "content": "Hi"}]}
    job = predictor.open({"body": json.dumps(chat).encode()}, "chat", ident="short")
    assert job.ask.options.max_new_tokens == predictor.gen.max_new_tokens  # 256: the cap, with room to spare
    long = {**chat, "messages": [{"role": "user", "content": "Hi " * 120}]}
    job = predictor.open({"body": json.dumps(long).encode()}, "chat", ident="long")
    assert job.ask.options.max_new_tokens == predictor.gen.max_length - job.rows[0].completion.prompt_tokens < 256
    with pytest.raises(Exception, match="max_tokens is 0, the model's cap is 256"):
        predictor.open({"body": json.dumps({**chat, "max_tokens": 0}).encode()}, "chat", ident="zero")
