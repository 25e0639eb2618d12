"""The OpenAI API on both servers, through the official `openai` client: the same verified archive, real HTTP, real processes.

Greedy answers are checked token for token against transformers' own `generate`, streamed and
not; the chat route against transformers' apply_chat_template; refusals by the client's own
exception classes; a client that goes away by what the server logged when it stopped.
"""

from __future__ import annotations

import contextlib
import io
import json
import re
import shutil
import subprocess
import time
from pathlib import Path

import openai
import pytest

from pipeline import cli
from pipeline.generation import text
from pipeline.serving.common.client import http
from pipeline.settings import Settings, resolve
from tests.generation.checkpoints import EOS, transformers_chat_greedy, transformers_greedy
from tests.helpers import REPO

PROMPT = "The quick brown fox"
CHAT = [{"role": "system", "content": "You answer briefly."}, {"role": "user", "content": "Where is the station?"}]


@pytest.fixture(scope="module", params=["torchserve", "ray"])
def served(request, small_llama):
    """(backend, server info, openai client, what `serve` printed): one server per backend, started as a user starts it."""
    folder, root = small_llama
    settings = Settings(model=f"hf:{folder}", root=root)
    if request.param == "torchserve":
        if shutil.which("java") is None:
            pytest.skip("TorchServe needs java (.ci/run installs it)")
        from pipeline.serving.torchserve import server
    else:
        from pipeline.serving.ray import server  # type: ignore[no-redef]
    printed = io.StringIO()
    try:
        with contextlib.redirect_stdout(printed):
            assert cli.main(["serve", "--on", request.param, "--model", f"hf:{folder}", "--root", str(root), "--ports", "auto"]) == 0
        info = server.load_info(resolve(settings)[1])
        assert info is not None
        yield (
            request.param,
            info,
            openai.OpenAI(api_key=info.token(), base_url=f"{info.inference}/v1", max_retries=0, timeout=60),
            printed.getvalue(),
        )
    finally:
        server.stop(settings)


@pytest.fixture(scope="module")
def tok(small_llama):
    return text.load(small_llama[0] / "tokenizer.json")


def expected_text(tok, tokens: list[int]) -> tuple[str, str]:
    """The text of greedy tokens (EOS not shown) and the finish_reason the OpenAI API gives them."""
    return tok.decode([t for t in tokens if t != EOS]), "stop" if tokens and tokens[-1] == EOS else "length"


@pytest.mark.slow
def test_greedy_completions_are_transformers_tokens_streamed_and_not(served, small_llama, tok):
    backend, info, client, _ = served
    assert [m.id for m in client.models.list().data] == [info.model]
    tokens = transformers_greedy(small_llama[0], [PROMPT], 200)[0]
    want, reason = expected_text(tok, tokens)
    whole = client.completions.create(model=info.model, prompt=PROMPT, max_tokens=200, temperature=0)
    assert (whole.choices[0].text, whole.choices[0].finish_reason) == (want, reason)
    assert (whole.usage.prompt_tokens, whole.usage.completion_tokens) == (len(text.encode(tok, [PROMPT])[0]), len(tokens))

    pieces, usage = [], None
    for chunk in client.completions.create(
        model=info.model, prompt=PROMPT, max_tokens=200, temperature=0, stream=True, stream_options={"include_usage": True}
    ):
        if chunk.choices:
            pieces.append(chunk.choices[0])
        usage = chunk.usage or usage
    assert "".join(p.text for p in pieces) == want and pieces[-1].finish_reason == reason
    assert usage is not None and usage.completion_tokens == len(tokens)
    assert len(pieces) > len(tokens) // 4, f"{len(pieces)} chunks for {len(tokens)} tokens"  # the text as it is made


@pytest.mark.slow
def test_a_stream_arrives_as_it_is_made(served):
    """Eight prompts of 200 tokens (the small model makes one alone faster than the client's own overhead):
    the first chunk comes well before the last."""
    backend, info, client, _ = served
    prompts = [f"{n} {PROMPT}" for n in range(8)]
    seen = []
    for _ in range(3):  # a burst of load can hold one first chunk back past the whole (0.2 s) run; a buffered stream fails all three
        start, times = time.perf_counter(), []
        for _ in client.completions.create(model=info.model, prompt=prompts, max_tokens=200, temperature=0, stream=True):
            times.append(time.perf_counter() - start)
        assert len(times) > 8 * 10
        seen.append(f"{times[0]:.3f} s of {times[-1]:.3f} s")
        if times[0] < times[-1] / 2:
            break
    else:
        pytest.fail(f"first chunk at {', '.join(seen)} ({backend})")


@pytest.mark.slow
def test_the_chat_route_renders_the_template_as_transformers_does(served, small_llama, tok):
    _, info, client, _ = served
    want, reason = expected_text(tok, transformers_chat_greedy(small_llama[0], CHAT, 24))
    whole = client.chat.completions.create(model=info.model, messages=CHAT, max_tokens=24, temperature=0)
    assert (whole.choices[0].message.role, whole.choices[0].message.content, whole.choices[0].finish_reason) == ("assistant", want, reason)
    chunks = list(client.chat.completions.create(model=info.model, messages=CHAT, max_tokens=24, temperature=0, stream=True))
    assert chunks[0].choices[0].delta.role == "assistant"
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == want and chunks[-1].choices[0].finish_reason == reason


@pytest.mark.slow
def test_sampling_is_seeded_and_stop_strings_end_the_text(served):
    _, info, client, _ = served
    ask = dict(model=info.model, prompt=PROMPT, max_tokens=40, temperature=0.9, top_p=0.95, seed=7)
    first, again = (client.completions.create(**ask).choices[0].text for _ in range(2))
    assert first == again
    greedy = client.completions.create(model=info.model, prompt=PROMPT, max_tokens=40, temperature=0).choices[0].text
    stop = greedy[5:8]
    cut = client.completions.create(model=info.model, prompt=PROMPT, max_tokens=40, temperature=0, stop=[stop]).choices[0]
    assert (cut.text, cut.finish_reason) == (greedy[: greedy.index(stop)], "stop")
    fixed = client.completions.create(model=info.model, prompt="Hi", max_tokens=60, temperature=0, extra_body={"ignore_eos": True})
    assert (fixed.usage.completion_tokens, fixed.choices[0].finish_reason) == (60, "length")  # vLLM's extension: a fixed length


@pytest.mark.slow
def test_refusals_are_the_clients_own_errors_and_say_what_is_wrong(served):
    _, info, client, _ = served
    with pytest.raises(openai.BadRequestError, match="max_tokens is 999, the model's cap is 256"):
        client.completions.create(model=info.model, prompt="Hi", max_tokens=999)
    with pytest.raises(
        openai.BadRequestError, match=r"a prompt of \d+ tokens plus max_tokens 200 is \d+ positions, the model's maximum length is 512"
    ):
        client.completions.create(model=info.model, prompt="Hi " * 400, max_tokens=200)
    with pytest.raises(openai.BadRequestError, match="n=2 is not served here"):
        client.completions.create(model=info.model, prompt="Hi", n=2)
    with pytest.raises(openai.NotFoundError, match="the model 'gpt-4o' is not served here"):
        client.completions.create(model="gpt-4o", prompt="Hi")
    status, body = http("POST", f"{info.inference}/v2/models/{info.model}/infer", b'{"inputs": []}', info.token())
    assert status == 404 and b"generates text: POST /v1/completions" in body
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(api_key="wrong-key-0000000000", base_url=f"{info.inference}/v1", max_retries=0).models.list()


@pytest.mark.slow
def test_serve_prints_the_openai_base_url_and_a_stream_that_works(served, small_llama, tok):
    _, info, _, printed = served
    assert f"OpenAI   {info.inference}/v1 (/completions, /chat/completions, /models)" in printed
    [line] = [line for line in printed.splitlines() if line.startswith("  stream   ")]
    done = subprocess.run(line.removeprefix("  stream   "), shell=True, capture_output=True, text=True, timeout=60, cwd=REPO)
    events = [e[len("data: ") :] for e in done.stdout.splitlines() if e.startswith("data: ")]
    assert events[-1] == "[DONE]", done.stdout + done.stderr
    streamed = "".join(json.loads(e)["choices"][0]["text"] for e in events[:-1])
    assert streamed == expected_text(tok, transformers_greedy(small_llama[0], ["Once upon a time"], 32)[0])[0]
    assert "python   openai.OpenAI(base_url=" in printed


@pytest.mark.slow
def test_the_native_route_streams_events_the_same_text(served, small_llama, tok):
    _, info, _, _ = served
    body = json.dumps({"text": PROMPT, "max_new_tokens": 30, "stream": True}).encode()
    status, raw = http("POST", info.predictions_url, body, token=info.token(), timeout=60)
    assert status == 200
    events = [line[len("data: ") :] for line in raw.decode().splitlines() if line.startswith("data: ")]
    assert events[-1] == "[DONE]"
    parsed = [json.loads(e) for e in events[:-1]]
    tokens = transformers_greedy(small_llama[0], [PROMPT], 30)[0]
    assert "".join(e["text"] for e in parsed) == expected_text(tok, tokens)[0]
    assert parsed[-1]["tokens"] == tokens and parsed[-1]["usage"]["completion_tokens"] == len(tokens)


@pytest.mark.slow
def test_a_client_that_goes_away_stops_its_generation(served, measure):
    """Eight prompts of 256 tokens each (a batch of eight rows steps slower than one): the client leaves after its
    third chunk, and the server's log says how many tokens were made when it stopped."""
    backend, info, client, _ = served
    prompts = [f"{n} sea shells by the sea shore" for n in range(8)]
    stream = client.completions.create(model=info.model, prompt=prompts, max_tokens=256, temperature=0, stream=True)
    for received, _ in enumerate(stream, start=1):
        if received == 3:
            break
    stream.close()
    # TorchServe drops the job at once, and its worker hears of it with its next batch: the next request.
    time.sleep(0.5)
    client.completions.create(model=info.model, prompt="Hi", max_tokens=2)
    made = stopped_line(backend, info, deadline=time.monotonic() + 20)
    assert made is not None, "the server did not log that the generation stopped"
    measure(f"disconnect ({backend}): the client read 3 chunks and left; {made} of 2048 tokens were made")
    assert made < 8 * 256


def stopped_line(backend: str, info, deadline: float) -> int | None:
    """The token count in the server's "generation ... stopped after N token(s): the client went away" line."""
    pattern = re.compile(r"generation \S+ stopped after (\d+) token\(s\): the client went away")
    while time.monotonic() < deadline:
        logs = (
            [Path(info.run_dir) / "logs" / "model_log.log"] if backend == "torchserve" else list(Path(info.temp_dir).rglob("replica_*.log"))
        )
        for log in logs:
            if log.is_file() and (match := pattern.search(log.read_text(errors="replace"))):
                return int(match.group(1))
        time.sleep(0.2)
    return None
