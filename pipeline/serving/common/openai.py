"""The OpenAI API's shapes: `/v1/completions`, `/v1/chat/completions` and `/v1/models`, not streamed and as Server-Sent Events.

The requests and answers follow the OpenAI API reference (the legacy Completions API and
Chat Completions), as vLLM, TGI and Ray Serve LLM speak them, so the official `openai`
client works against either server with `base_url=http://127.0.0.1:PORT/v1` and the
server's bearer token as `api_key`. What this server does not do is refused with a 400 that
says so, never ignored: `n` other than 1, `echo`, `logprobs`, `best_of`, penalties, `suffix`,
`logit_bias`, tools. vLLM's `ignore_eos` extension is taken (a fixed length, as benchmarks ask). Where a request leaves `temperature` or `top_p` out, the model's own
generation_config.json defaults apply (greedy where it sets none), as vLLM does; the OpenAI
service's own default is a temperature of 1. A streamed answer is `data: {chunk}` events and
a final `data: [DONE]`; an error once the stream has started is an event
`data: {"error": {...}}` and the stream ends.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

import orjson
from sse_starlette import ServerSentEvent

from pipeline.serving.common.contract import RequestError

COMPLETIONS, CHAT = "completions", "chat"
# Fields accepted with their OpenAI defaults, or refused when they ask for what is not served.
IGNORED = ("user", "metadata", "store", "service_tier")
NEUTRAL = {
    "n": 1,
    "best_of": 1,
    "echo": False,
    "logprobs": None,
    "top_logprobs": None,
    "presence_penalty": 0,
    "frequency_penalty": 0,
    "suffix": None,
    "logit_bias": None,
    "tools": None,
    "tool_choice": None,
    "functions": None,
    "response_format": None,
}
# ignore_eos: vLLM's extension (the openai client sends it with extra_body): a fixed length, for benchmarks.
COMMON = ("model", "max_tokens", "temperature", "top_p", "seed", "stop", "stream", "stream_options", "ignore_eos")
FIELDS = {COMPLETIONS: ("prompt", *COMMON), CHAT: ("messages", "max_completion_tokens", *COMMON)}
DEFAULT_MAX_TOKENS = 16  # the Completions API's own default


def error_body(code: int, message: str) -> dict[str, Any]:
    """The OpenAI error object: the client raises its status's exception with this message."""
    kind = {400: "invalid_request_error", 401: "authentication_error", 404: "not_found_error", 503: "server_error"}
    return {
        "error": {
            "message": message,
            "type": kind.get(code, "server_error" if code >= 500 else "invalid_request_error"),
            "param": None,
            "code": code,
        }
    }


def check_fields(kind: str, body: dict[str, Any], model: str) -> None:
    """Refuse unknown fields, values asking for what is not served, and another model's name."""
    known = set(FIELDS[kind]) | set(IGNORED) | set(NEUTRAL)
    other = sorted(set(body) - known)
    if other:
        raise RequestError(f"unknown field(s) {other} for /v1/{'chat/completions' if kind == CHAT else 'completions'}")
    for name, neutral in NEUTRAL.items():
        value = body.get(name, neutral)
        if value != neutral and not (neutral is None and value in ({}, [])):
            raise RequestError(
                f"{name}={orjson.dumps(value).decode()[:40]} is not served here; leave it out (or {orjson.dumps(neutral).decode()})"
            )
    asked = body.get("model")
    if not isinstance(asked, str):
        raise RequestError(f'send "model": "{model}"')
    if asked != model:
        raise RequestError(f"the model {asked!r} is not served here; this server serves {model!r} (GET /v1/models)", code=404)
    for flag in ("stream", "ignore_eos"):
        if not isinstance(body.get(flag, False), bool):
            raise RequestError(f'"{flag}" must be true or false')
    options = body.get("stream_options")
    if options is not None and (not isinstance(options, dict) or set(options) - {"include_usage"}):
        raise RequestError('"stream_options" takes only {"include_usage": true|false}')


def max_tokens(kind: str, body: dict[str, Any]) -> Any:
    if kind == CHAT:
        return body.get("max_completion_tokens", body.get("max_tokens"))
    return body.get("max_tokens", DEFAULT_MAX_TOKENS)


def messages(body: dict[str, Any]) -> list[dict[str, str]]:
    """The chat's messages, each a role and its text (a string, or a list of text parts)."""
    value = body.get("messages")
    if not isinstance(value, list) or not value:
        raise RequestError('"messages" must be a non-empty list of {"role": ..., "content": ...}')
    out = []
    for i, message in enumerate(value):
        if not isinstance(message, dict) or not isinstance(message.get("role"), str):
            raise RequestError(f'message {i} must be an object with a "role" and a "content"')
        content = message.get("content")
        if isinstance(content, list):  # [{"type": "text", "text": ...}]: the text parts, joined
            if not all(isinstance(p, dict) and p.get("type") == "text" and isinstance(p.get("text"), str) for p in content):
                raise RequestError(f"message {i}: only text parts are served here")
            content = "".join(p["text"] for p in content)
        if not isinstance(content, str):
            raise RequestError(f'message {i}: "content" must be a string')
        out.append({"role": message["role"], "content": content})
    return out


def completion(kind: str, ident: str, created: int, model: str, choices: list[dict], usage: dict | None) -> dict[str, Any]:
    """A whole answer: `choices` are (index, text, finish_reason)."""
    if kind == CHAT:
        shaped = [
            {
                "index": c["index"],
                "message": {"role": "assistant", "content": c["text"]},
                "finish_reason": c["finish_reason"],
                "logprobs": None,
            }
            for c in choices
        ]
        obj = "chat.completion"
    else:
        shaped = [{"index": c["index"], "text": c["text"], "finish_reason": c["finish_reason"], "logprobs": None} for c in choices]
        obj = "text_completion"
    return {"id": ident, "object": obj, "created": created, "model": model, "choices": shaped, "usage": usage}


def chunk(
    kind: str, ident: str, created: int, model: str, choices: list[dict], usage: dict | None = None, first: bool = False
) -> dict[str, Any]:
    """One streamed event: each choice's new text (and its finish_reason on its last)."""
    if kind == CHAT:
        shaped = []
        for c in choices:
            delta: dict[str, Any] = {"role": "assistant"} if first else {}
            if c["text"] or first:
                delta["content"] = c["text"]
            shaped.append({"index": c["index"], "delta": delta, "finish_reason": c["finish_reason"], "logprobs": None})
        obj = "chat.completion.chunk"
    else:
        shaped = [{"index": c["index"], "text": c["text"], "finish_reason": c["finish_reason"], "logprobs": None} for c in choices]
        obj = "text_completion"
    out: dict[str, Any] = {"id": ident, "object": obj, "created": created, "model": model, "choices": shaped}
    if usage is not None:
        out["usage"] = usage
    return out


def models(model: str, created: int) -> dict[str, Any]:
    """GET /v1/models: the one model this server serves."""
    return {"object": "list", "data": [{"id": model, "object": "model", "created": created, "owned_by": "pipeline"}]}


def render_chat(template: str, messages: list[dict[str, str]], bos_token: str, eos_token: str) -> str:
    """The chat as the model's prompt, rendered as transformers' apply_chat_template does (a sandboxed Jinja
    environment, trim_blocks and lstrip_blocks, `raise_exception`), with the assistant's turn opened."""
    from jinja2 import TemplateError
    from jinja2.ext import loopcontrols
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    def raise_exception(message: str):
        raise TemplateError(message)

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=[loopcontrols])
    env.globals["raise_exception"] = raise_exception
    env.globals["strftime_now"] = lambda fmt: datetime.now().strftime(fmt)
    try:
        return env.from_string(template).render(messages=messages, add_generation_prompt=True, bos_token=bos_token, eos_token=eos_token)
    except TemplateError as exc:
        raise RequestError(f"the model's chat template refused these messages: {exc}") from None


def event(payload: dict[str, Any] | str) -> bytes:
    """One Server-Sent Event with `payload` as its data."""
    return ServerSentEvent(data=payload if isinstance(payload, str) else orjson.dumps(payload).decode()).encode()


DONE = event("[DONE]")
