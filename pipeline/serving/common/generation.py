"""A generation model's serving code path: `{"text": ...}` in, the generated text out, through the one generation loop.

`open_model` returns a `GenerationPredictor` for an archive whose contract has a `generation`
section; both servers then call `answer` as they call a `Predictor`'s. A request is
`{"text": "a prompt" | ["several", "prompts"], "max_new_tokens": 32, "temperature": 0,
"top_p": 1, "top_k": 0, "seed": null, "stop": "a string" | [...]}`; the answer
`{"text", "tokens", "finish_reason", "usage": {"prompt_tokens", "completion_tokens"}}`, or a
list of them for a list of prompts. Everything is checked before any token is generated:
the fields and their types, each text's size before it is tokenized, then the contract's
caps (prompts per request, new tokens, each prompt's length plus the new tokens).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import orjson

from pipeline.errors import RequestError as LimitError
from pipeline.generation import text
from pipeline.generation.engines import OnnxEngine
from pipeline.generation.loop import Options, Run
from pipeline.generation.sampling import Sampling
from pipeline.runtimes.session import SessionConfig
from pipeline.serving.common.contract import Contract, RequestError, decode_body, generation_layout
from pipeline.serving.common.predictor import Answer

FIELDS = ("text", "max_new_tokens", "temperature", "top_p", "top_k", "seed", "stop")
DEFAULT_NEW_TOKENS = 32
MAX_STOPS = 4


class GenerationPredictor:
    """The archive's decoder graph and tokenizer; `answer` generates for each request in turn."""

    def __init__(self, contract: Contract, session, config: SessionConfig, tokenizer: Path):
        assert contract.generation is not None
        self.contract = contract
        self.session = session
        self.provider = session.get_providers()[0]
        self.gen = generation_layout(contract.generation, tokenizer)
        self.tokenizer = text.load(tokenizer)
        self.engine = OnnxEngine(None, self.gen, config, session=session)
        self.example = orjson.dumps({"text": "Once upon a time", "max_new_tokens": 16}).decode()

    def answer(self, items: list, content_types: Sequence[str | None] | None = None) -> list[Answer]:
        answers = []
        for item in items:
            try:
                run, single = self.start(decode_body(item, self.example))
                done = run.finish()
            except RequestError as exc:
                answers.append(Answer.error(exc.code, str(exc)))
                continue
            except LimitError as exc:
                answers.append(Answer.error(400, f"{exc.problem}; {exc.fix}"))
                continue
            results = [
                {
                    "text": c.text,
                    "tokens": c.tokens,
                    "finish_reason": c.finish_reason,
                    "usage": {"prompt_tokens": c.prompt_tokens, "completion_tokens": len(c.tokens)},
                }
                for c in done
            ]
            answers.append(Answer(200, orjson.dumps(results[0] if single else results)))
        return answers

    def start(self, body: dict[str, Any]) -> tuple[Run, bool]:
        """The request's run, every field and limit checked; and whether it sent one prompt (not a list)."""
        other = sorted(set(body) - set(FIELDS))
        if other:
            raise RequestError(f"unknown field(s) {other}; a generation request takes {', '.join(FIELDS)}, e.g. {self.example}")
        prompts, single = self.prompts(body.get("text"))
        new = body.get("max_new_tokens", DEFAULT_NEW_TOKENS)
        if isinstance(new, bool) or not isinstance(new, int):
            raise RequestError(f"max_new_tokens must be an integer, got {orjson.dumps(new).decode()[:40]}")
        options = Options(max_new_tokens=new, sampling=self.sampling(body), stop=self.stops(body.get("stop")))
        rows = text.encode(self.tokenizer, prompts, self.gen.bos_id)
        return Run(self.engine, self.gen, self.tokenizer, rows, options), single

    def prompts(self, value: Any) -> tuple[list[str], bool]:
        if value is None:
            raise RequestError(f'send the prompt as "text": {self.example}')
        single = isinstance(value, str)
        prompts = [value] if single else value
        if not isinstance(prompts, list) or not all(isinstance(p, str) for p in prompts):
            raise RequestError('"text" must be a string or a list of strings')
        if not 1 <= len(prompts) <= self.gen.max_batch:
            raise RequestError(f'"text" has {len(prompts)} prompts; this model takes 1 to {self.gen.max_batch} per request')
        cap = self.gen.max_length * text.CHARS_PER_TOKEN
        for i, prompt in enumerate(prompts):
            if len(prompt) > cap:  # before the tokenizer spends time on it
                raise RequestError(
                    f"prompt {i} has {len(prompt)} characters; at most {cap} are read (the model's {self.gen.max_length} positions)"
                )
        return prompts, single

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
