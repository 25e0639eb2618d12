"""A generation model's serving code path: requests in, their tokens out as they come, many requests sharing each decode step.

`open_model` returns a `GenerationPredictor` for an archive whose contract has a `generation`
section. Both servers drive it the same way: `open` a request (every field and limit checked
before any work: a bad one is a RequestError with its HTTP status), then call `step()`, which
runs one decode step for every open request through one continuous batch
(`pipeline.generation.batching`) and gives each its bytes for that step and whether it ended;
`cancel` takes out a request whose client went away. TorchServe calls `step()` once per
handler call (its continuous batching hands the same requests back each time); Ray Serve
from a thread of its own.

Three protocols, one loop:
- "native", `POST /predictions/<model>`: `{"text": "a prompt" | ["several", "prompts"],
  "max_new_tokens": 32, "temperature": 0, "top_p": 1, "top_k": 0, "seed": null, "stop": ...,
  "stream": false}`. The answer is `{"text", "tokens", "finish_reason", "usage"}` (a list of
  them for a list of prompts); streamed, Server-Sent Events `{"index", "text"}` as the text
  grows, one `{"index", "text", "finish_reason", "tokens", "usage"}` as each prompt ends, then `[DONE]`.
- "completions" and "chat": the OpenAI API (`pipeline.serving.common.openai`).

Each request has a wall-clock limit (the contract's request_timeout_s): past it, it ends with
an error (an error event where its stream has started). An engine failure ends every open
request the same way; nothing is left hanging.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import orjson

from pipeline.errors import RequestError as LimitError
from pipeline.generation import text
from pipeline.generation.batching import Batcher
from pipeline.generation.engines import OnnxEngine
from pipeline.generation.loop import Options, Row, check_limits
from pipeline.generation.sampling import Sampling
from pipeline.runtimes.session import SessionConfig
from pipeline.serving.common import openai
from pipeline.serving.common.contract import Contract, RequestError, decode_body, generation_layout
from pipeline.serving.common.metrics import CLIENT_GONE, Recorder
from pipeline.serving.common.predictor import Answer

log = logging.getLogger(__name__)
NATIVE = "native"
PROTOCOLS = (NATIVE, openai.COMPLETIONS, openai.CHAT)
FIELDS = ("text", "max_new_tokens", "temperature", "top_p", "top_k", "seed", "stop", "stream")
DEFAULT_NEW_TOKENS = 32
MAX_STOPS = 4
SSE = "text/event-stream"


@dataclass(frozen=True)
class Ask:
    """What a request asks for, in any protocol."""

    prompts: list[str]
    single: bool  # one prompt, not a list: the answer is one object
    options: Options
    stream: bool = False
    include_usage: bool = False  # OpenAI's stream_options: a last chunk with the usage
    special_tokens: bool = True  # a rendered chat template holds its own
    tokens_field: str = "max_new_tokens"  # what the request calls its cap on new tokens
    fit: bool = False  # it set none: as many as fit in the model's length, within the cap


@dataclass
class Job:
    """One request in flight: its rows' answers grow as the batch steps."""

    id: str
    protocol: str
    ask: Ask
    rows: list[Row]
    created: int
    deadline: float  # time.monotonic()
    started: bool = False  # its first bytes went out (a server cannot change the status after that)
    status: int = 200
    opened: float = field(default_factory=time.perf_counter)
    first_token: bool = False  # a token was made for it (time to first token recorded)
    reported: set[int] = field(default_factory=set)  # rows whose end was sent

    @property
    def keys(self) -> list[tuple[str, int]]:
        return [(self.id, i) for i in range(len(self.rows))]

    @property
    def media_type(self) -> str:
        return SSE if self.ask.stream else "application/json"

    @property
    def usage(self) -> dict[str, int]:
        prompt = sum(r.completion.prompt_tokens for r in self.rows)
        new = sum(len(r.completion.tokens) for r in self.rows)
        return {"prompt_tokens": prompt, "completion_tokens": new, "total_tokens": prompt + new}


class GenerationPredictor:
    """The archive's decoder graph and tokenizer, and the requests being generated."""

    def __init__(self, contract: Contract, session, config: SessionConfig, tokenizer: Path):
        assert contract.generation is not None
        self.contract = contract
        self.session = session
        self.provider = session.get_providers()[0]
        self.gen = generation_layout(contract.generation, tokenizer)
        self.tokenizer = text.load(tokenizer)
        self.engine = OnnxEngine(None, self.gen, config, session=session)
        self.batcher = Batcher(self.engine, self.gen, self.tokenizer, self.gen.max_streams)
        self.jobs: dict[str, Job] = {}
        # The server's metrics (pipeline.serving.common.metrics); requests are counted where they end, here.
        self.recorder: Recorder | None = None
        self.lock = threading.Lock()  # Ray opens and cancels on its event loop while a thread steps
        self.created = int(time.time())
        self.example = orjson.dumps({"text": "Once upon a time", "max_new_tokens": 16}).decode()
        self.special = {
            "bos_token": "" if self.gen.bos_id is None else self.tokenizer.id_to_token(self.gen.bos_id) or "",
            "eos_token": self.tokenizer.id_to_token(self.gen.eos_ids[0]) or "" if self.gen.eos_ids else "",
        }

    # Requests in and out

    def open(self, item: Any, protocol: str = NATIVE, ident: str | None = None) -> Job:
        """Check a request and queue its rows; a RequestError (with its status) for anything wrong, before any work."""
        try:
            return self._open(item, protocol, ident)
        except RequestError as exc:
            self.record(None, exc.code)
            raise

    def _open(self, item: Any, protocol: str, ident: str | None) -> Job:
        ident = ident or f"{time.monotonic_ns():x}"
        body = decode_body(item, self.example)
        ask = self.ask(protocol, body)
        try:
            rows = text.encode(self.tokenizer, ask.prompts, self.gen.bos_id, special_tokens=ask.special_tokens)
            if ask.fit:  # a chat that set no max_tokens, as OpenAI's: the room left, within the cap
                room = min(self.gen.max_new_tokens, self.gen.max_length - max(len(row) for row in rows))
                ask = replace(ask, options=replace(ask.options, max_new_tokens=max(room, 1)))
            for row in rows:
                check_limits(self.gen, [row], ask.options.max_new_tokens, ask.tokens_field)
        except LimitError as exc:
            raise RequestError(f"{exc.problem}; {exc.fix}") from None
        with self.lock:
            if ident in self.jobs:
                raise RequestError(f"request id {ident} is already being generated", code=409)
            job = Job(ident, protocol, ask, [], int(time.time()), time.monotonic() + self.gen.request_timeout_s)
            job.rows = [self.batcher.add((ident, i), row, ask.options) for i, row in enumerate(rows)]
            self.jobs[ident] = job
            self.gauge()
        return job

    def record(self, job: Job | None, code: int) -> None:
        """A request that ended with `code` (499: its client went away), in the server's metrics."""
        if self.recorder is not None:
            self.recorder.answered(code, None if job is None else time.perf_counter() - job.opened)

    def gauge(self) -> None:
        if self.recorder is not None:
            self.recorder.in_flight.set(len(self.jobs))

    def cancel(self, ident: str, why: str = "the client went away") -> Job | None:
        """Take a request out before the next step; its generation stops there."""
        with self.lock:
            job = self.jobs.pop(ident, None)
            if job is not None:
                self.batcher.drop(job.keys)
                tokens = sum(len(r.completion.tokens) for r in job.rows)
                log.warning("generation %s stopped after %d token(s): %s", ident, tokens, why)
                self.record(job, CLIENT_GONE)
                self.gauge()
        return job

    def step(self) -> dict[str, tuple[bytes, bool]]:
        """One token for every open request: each request's bytes for this step, and whether it ended."""
        with self.lock:
            if not self.jobs:
                return {}
            try:
                out = self.batcher.step()
            except Exception as exc:  # the engine failed: every open request ends with an error, none hangs
                log.exception("generation failed")
                self.batcher.clear()
                ended = {
                    ident: (self.failure(job, 500, f"generation failed: {type(exc).__name__}: {exc}"), True)
                    for ident, job in self.jobs.items()
                }
                for job in self.jobs.values():
                    self.record(job, 500)
                self.jobs.clear()
                self.gauge()
                return ended
            now, results = time.monotonic(), {}
            self.count_tokens(out)
            for ident, job in list(self.jobs.items()):
                pieces = {i: out[key].text for i, key in enumerate(job.keys) if key in out}
                if not any(row.running for row in job.rows):
                    data, done = self.last(job, pieces), True
                elif now > job.deadline:
                    self.batcher.drop(job.keys)
                    limit = self.gen.request_timeout_s
                    data, done = (
                        self.failure(job, 504, f"the request ran past its {limit} s limit (request_timeout_s); ask for fewer tokens"),
                        True,
                    )
                else:
                    data, done = (self.chunk(job, pieces) if job.ask.stream else b""), False
                job.started = True
                if done:
                    del self.jobs[ident]
                    self.record(job, job.status)
                results[ident] = (data, done)
            self.gauge()
            return results

    def count_tokens(self, out: dict) -> None:
        """A decode step's tokens (one per key in `out`), its streams, and each request's first token, in the metrics."""
        recorder = self.recorder
        if recorder is None:
            return
        recorder.batch.observe(len(self.jobs))
        recorder.tokens.inc(len(out))
        now = time.perf_counter()
        for job in self.jobs.values():
            if not job.first_token and any(key in out for key in job.keys):
                job.first_token = True
                recorder.first_token.observe(now - job.opened)

    def answer(self, items: list, content_types: Sequence[str | None] | None = None) -> list[Answer]:
        """Native requests generated to their end together (the non-streamed path, one call)."""
        answers: list[Answer | None] = [None] * len(items)
        open_jobs: dict[str, tuple[int, Job]] = {}
        for i, item in enumerate(items):
            try:
                job = self.open(item)
            except RequestError as exc:
                answers[i] = Answer.error(exc.code, str(exc))
                continue
            open_jobs[job.id] = (i, job)
        chunks: dict[str, list[bytes]] = {ident: [] for ident in open_jobs}
        while chunks.keys() & self.jobs.keys():
            for ident, (data, _) in self.step().items():
                if ident in chunks:
                    chunks[ident].append(data)
        for ident, (i, job) in open_jobs.items():
            answers[i] = Answer(job.status, b"".join(chunks[ident]))
        return [a for a in answers if a is not None]

    # What a request asks for

    def ask(self, protocol: str, body: dict[str, Any]) -> Ask:
        if protocol == NATIVE:
            return self.native_ask(body)
        if protocol not in PROTOCOLS:  # the Open Inference Protocol's infer route: tensors, not text
            model = self.contract.model
            raise RequestError(
                f"{model} generates text: POST /v1/completions or /predictions/{model}, not /v2/models/{model}/infer", code=404
            )
        openai.check_fields(protocol, body, self.contract.model)
        cap_name = "max_completion_tokens" if "max_completion_tokens" in body else "max_tokens"
        asked = openai.max_tokens(protocol, body)  # None: a chat that set none
        options = Options(
            max_new_tokens=self.gen.max_new_tokens if asked is None else self.new_tokens(cap_name, asked),
            sampling=self.sampling(body),
            stop=self.stops(body.get("stop")),
            ignore_eos=body.get("ignore_eos", False),
        )
        stream, usage = body.get("stream", False), bool((body.get("stream_options") or {}).get("include_usage"))
        if protocol == openai.CHAT:
            if not self.gen.chat_template:
                raise RequestError(f"{self.contract.model}'s tokenizer has no chat template: use /v1/completions with a prompt", code=404)
            prompt = openai.render_chat(self.gen.chat_template, openai.messages(body), **self.special)
            self.check_length(prompt, 0)
            return Ask([prompt], True, options, stream, usage, special_tokens=False, tokens_field=cap_name, fit=asked is None)
        prompts, single = self.prompts(body.get("prompt"), "prompt")
        return Ask(prompts, single, options, stream, usage, tokens_field=cap_name)

    def native_ask(self, body: dict[str, Any]) -> Ask:
        other = sorted(set(body) - set(FIELDS))
        if other:
            raise RequestError(f"unknown field(s) {other}; a generation request takes {', '.join(FIELDS)}, e.g. {self.example}")
        prompts, single = self.prompts(body.get("text"), "text")
        stream = body.get("stream", False)
        if not isinstance(stream, bool):
            raise RequestError('"stream" must be true or false')
        options = Options(
            max_new_tokens=self.new_tokens("max_new_tokens", body.get("max_new_tokens", DEFAULT_NEW_TOKENS)),
            sampling=self.sampling(body),
            stop=self.stops(body.get("stop")),
        )
        return Ask(prompts, single, options, stream)

    def new_tokens(self, name: str, value: Any) -> int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise RequestError(f"{name} must be an integer, got {orjson.dumps(value).decode()[:40]}")
        return value  # its cap is checked with the prompt's length (check_limits)

    def prompts(self, value: Any, name: str) -> tuple[list[str], bool]:
        if value is None:
            raise RequestError(f'send the prompt as "{name}": {self.example if name == "text" else ""}'.rstrip(": "))
        single = isinstance(value, str)
        prompts = [value] if single else value
        if not isinstance(prompts, list) or not all(isinstance(p, str) for p in prompts):
            raise RequestError(f'"{name}" must be a string or a list of strings')
        if not 1 <= len(prompts) <= self.gen.max_batch:
            raise RequestError(f'"{name}" has {len(prompts)} prompts; this model takes 1 to {self.gen.max_batch} per request')
        for i, prompt in enumerate(prompts):
            self.check_length(prompt, i)
        return prompts, single

    def check_length(self, prompt: str, i: int) -> None:
        cap = self.gen.max_length * text.CHARS_PER_TOKEN
        if len(prompt) > cap:  # before the tokenizer spends time on it
            raise RequestError(
                f"prompt {i} has {len(prompt)} characters; at most {cap} are read (the model's {self.gen.max_length} positions)"
            )

    def sampling(self, body: dict[str, Any]) -> Sampling:
        numbers = {}
        for name, kind in (("temperature", float), ("top_p", float), ("top_k", int), ("seed", int)):
            value = body.get(name)
            if value is None:
                continue
            ok = isinstance(value, (int, float)) and not isinstance(value, bool) and (kind is float or isinstance(value, int))
            if not ok:
                raise RequestError(
                    f"{name} must be {'a number' if kind is float else 'an integer'}, got {orjson.dumps(value).decode()[:40]}"
                )
            numbers[name] = value
        temperature = numbers.get("temperature", self.gen.temperature if self.gen.do_sample else 0.0)
        if temperature == 0:
            return Sampling(greedy=True)
        try:
            return Sampling(
                greedy=False,
                temperature=float(temperature),
                top_p=float(numbers.get("top_p", self.gen.top_p)),
                top_k=int(numbers.get("top_k", self.gen.top_k)),
                seed=numbers.get("seed"),
            )
        except LimitError as exc:
            raise RequestError(f"{exc.problem}; {exc.fix}") from None

    def stops(self, value: Any) -> tuple[str, ...]:
        stops = [] if value is None else [value] if isinstance(value, str) else value
        if not isinstance(stops, list) or not all(isinstance(s, str) and s for s in stops) or len(stops) > MAX_STOPS:
            raise RequestError(f'"stop" must be a non-empty string or a list of at most {MAX_STOPS} of them')
        return tuple(stops)

    # What goes out

    def choices(self, job: Job, pieces: dict[int, str]) -> list[dict[str, Any]]:
        """Each row with new text, or that ended (reported once), as (index, text, finish_reason)."""
        out = []
        for i, row in enumerate(job.rows):
            ended = not row.running and i not in job.reported
            if pieces.get(i) or ended:
                out.append({"index": i, "text": pieces.get(i, ""), "finish_reason": row.completion.finish_reason if ended else None})
                if ended:
                    job.reported.add(i)
        return out

    def chunk(self, job: Job, pieces: dict[int, str]) -> bytes:
        """A streamed request's events for this step."""
        first = not job.started
        choices = self.choices(job, pieces)
        if job.protocol == NATIVE:
            events = []
            for c in choices:
                payload: dict[str, Any] = {"index": c["index"], "text": c["text"]}
                if c["finish_reason"]:
                    done = job.rows[c["index"]].completion
                    payload |= {
                        "finish_reason": c["finish_reason"],
                        "tokens": done.tokens,
                        "usage": {"prompt_tokens": done.prompt_tokens, "completion_tokens": len(done.tokens)},
                    }
                events.append(openai.event(payload))
            return b"".join(events)
        ident = self.openai_id(job)
        if first and job.protocol == openai.CHAT:  # the role comes first, as OpenAI's stream sends it
            head = openai.event(
                openai.chunk(
                    openai.CHAT, ident, job.created, self.contract.model, [{"index": 0, "text": "", "finish_reason": None}], first=True
                )
            )
        else:
            head = b""
        return head + (openai.event(openai.chunk(job.protocol, ident, job.created, self.contract.model, choices)) if choices else b"")

    def last(self, job: Job, pieces: dict[int, str]) -> bytes:
        """A request's last bytes: the rest of its stream and [DONE], or its whole answer."""
        if job.ask.stream:
            tail = self.chunk(job, pieces)
            if job.protocol != NATIVE and job.ask.include_usage:
                tail += openai.event(openai.chunk(job.protocol, self.openai_id(job), job.created, self.contract.model, [], usage=job.usage))
            return tail + openai.DONE
        rows = [r.completion for r in job.rows]
        if job.protocol == NATIVE:
            results = [
                {
                    "text": c.text,
                    "tokens": c.tokens,
                    "finish_reason": c.finish_reason,
                    "usage": {"prompt_tokens": c.prompt_tokens, "completion_tokens": len(c.tokens)},
                }
                for c in rows
            ]
            return orjson.dumps(results[0] if job.ask.single else results)
        choices = [{"index": i, "text": c.text, "finish_reason": c.finish_reason} for i, c in enumerate(rows)]
        return orjson.dumps(openai.completion(job.protocol, self.openai_id(job), job.created, self.contract.model, choices, job.usage))

    def failure(self, job: Job, code: int, message: str) -> bytes:
        """A request that cannot go on: an error event where its stream has started, else its error body (and status)."""
        job.status = code
        log.warning("generation %s ended with %d: %s", job.id, code, message)
        body = openai.error_body(code, message) if job.protocol != NATIVE else {"error": message, "code": code}
        if job.ask.stream:
            return openai.event(body) + openai.DONE
        return orjson.dumps(body)

    def error(self, protocol: str, code: int, message: str) -> bytes:
        """A refused request's body in its protocol's error shape."""
        return (
            orjson.dumps(openai.error_body(code, message))
            if protocol in (openai.COMPLETIONS, openai.CHAT)
            else Answer.error(code, message).body
        )

    def models(self) -> bytes:
        return orjson.dumps(openai.models(self.contract.model, self.created))

    def openai_id(self, job: Job) -> str:
        return f"{'chatcmpl' if job.protocol == openai.CHAT else 'cmpl'}-{job.id}"
