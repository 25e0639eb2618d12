"""The generation loop: limits first, then a prefill and one decode step per new token on any engine.

One loop serves parity, `python -m pipeline generate`, the benchmark and the servers: each
runs a `Run` and reads its tokens as they come (`for deltas in run`) or at the end
(`run.finish()`). A batch of prompts is left-padded, so every row's last token sits at the
same place and the position ids come from the attention mask. A row stops at an EOS token,
at a stop string (its text ends before the stop string, as the OpenAI API's does), or at
`max_new_tokens`; the batch stops when every row has. A finished row is fed the pad token
until then, as transformers' `generate` does, and its answer no longer changes.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

import numpy as np
from tokenizers import Tokenizer

from pipeline.errors import RequestError
from pipeline.generation.engines import Engine
from pipeline.generation.sampling import Sampling, choose
from pipeline.generation.text import TextStream, left_pad
from pipeline.spec import Generation

STOP, LENGTH = "stop", "length"


@dataclass(frozen=True)
class Options:
    """What one request asks for: how many new tokens at most, how to pick them, where to stop."""

    max_new_tokens: int = 32
    sampling: Sampling = field(default_factory=Sampling)
    stop: tuple[str, ...] = ()
    # Run to max_new_tokens whatever the model says (a benchmark's fixed length): EOS is then a token like any other.
    ignore_eos: bool = False


@dataclass
class Completion:
    """One prompt's answer: the new token ids (EOS included where it ended the row), their text, and why it ended."""

    prompt_tokens: int
    tokens: list[int] = field(default_factory=list)
    text: str = ""
    finish_reason: str | None = None


@dataclass(frozen=True)
class Delta:
    """A new token of one row, and the text that became whole with it ("" while a character or a possible stop string is held back)."""

    row: int
    token: int
    text: str


def position_ids(attention_mask: np.ndarray, new: int) -> np.ndarray:
    """The positions of the last `new` tokens: real tokens count from 0, left padding sits at 1 (it is masked)."""
    positions = np.cumsum(attention_mask, axis=1) - 1
    positions[attention_mask == 0] = 1
    return positions[:, -new:].astype(np.int64)


def check_limits(gen: Generation, rows: Sequence[Sequence[int]], max_new_tokens: int, name: str = "max_new_tokens") -> None:
    """Refuse what the contract does not allow, before any work: the batch, new tokens (the request's field `name`), and
    each prompt's length plus them."""
    if not rows:
        raise RequestError("generate", "no prompt was given", "send at least one prompt")
    if len(rows) > gen.max_batch:
        raise RequestError(
            "generate",
            f"{len(rows)} prompts in one batch, the model's cap is {gen.max_batch}",
            f"send at most {gen.max_batch} prompts at a time",
        )
    if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, int) or not 1 <= max_new_tokens <= gen.max_new_tokens:
        raise RequestError(
            "generate",
            f"{name} is {max_new_tokens!r}, the model's cap is {gen.max_new_tokens}",
            f"ask for 1 to {gen.max_new_tokens} new tokens",
        )
    longest = max(len(row) for row in rows)
    if longest + max_new_tokens > gen.max_length:
        raise RequestError(
            "generate",
            f"a prompt of {longest} tokens plus {name} {max_new_tokens} is {longest + max_new_tokens} positions, "
            f"the model's maximum length is {gen.max_length}",
            f"shorten the prompt or ask for at most {max(gen.max_length - longest, 0)} new tokens",
        )


class Row:
    """One prompt's answer as it grows: its tokens, its text handed out a whole character at a time, stop strings held back."""

    def __init__(self, tokenizer: Tokenizer, prompt_tokens: int, options: Options, eos: set[int]):
        self.completion = Completion(prompt_tokens=prompt_tokens)
        self.stream = TextStream(tokenizer)
        self.stop = options.stop
        self.eos = eos
        self.shown = 0  # characters of the text handed out

    @property
    def running(self) -> bool:
        return self.completion.finish_reason is None

    def take(self, token: int, last: bool) -> str:
        """Add `token` (`last`: the row's final allowed one); the text that became whole with it."""
        done = self.completion
        done.tokens.append(token)
        if token in self.eos:
            done.finish_reason = STOP
        else:
            self.stream.push(token)
        if last and done.finish_reason is None:
            done.finish_reason = LENGTH
        text = self.stream.text + (self.stream.rest() if done.finish_reason else "")
        cut = min((i for i in (text.find(s) for s in self.stop) if i >= 0), default=-1)
        if cut >= 0:
            text, done.finish_reason = text[:cut], STOP
        done.text = text
        end = len(text) if done.finish_reason else len(text) - self._held(text)
        piece = text[self.shown : end]
        self.shown = max(self.shown, end)
        return piece

    def _held(self, text: str) -> int:
        """How much of the text's end could be the start of a stop string: kept back until it is known."""
        return max((n for s in self.stop for n in range(min(len(s) - 1, len(text)), 0, -1) if text.endswith(s[:n])), default=0)


class Run:
    """One batch of prompts through the loop; iterate it for each step's deltas, or call `finish()`."""

    def __init__(self, engine: Engine, gen: Generation, tokenizer: Tokenizer, rows: Sequence[Sequence[int]], options: Options):
        check_limits(gen, rows, options.max_new_tokens)
        self.engine, self.gen, self.options = engine, gen, options
        self.rows = [list(row) for row in rows]
        eos = set() if options.ignore_eos else set(gen.eos_ids)
        self.answers = [Row(tokenizer, len(row), options, eos) for row in self.rows]
        self.completions = [answer.completion for answer in self.answers]
        # perf_counter at the start and each time a step's tokens were chosen: time to first token, inter-token latency.
        self.started = 0.0
        self.token_times: list[float] = []

    def __iter__(self) -> Iterator[list[Delta]]:
        gen, options = self.gen, self.options
        rng = options.sampling.generator()
        self.started = time.perf_counter()
        ids, mask = left_pad(self.rows, gen.pad_id)
        logits, cache = self.engine.step(ids, mask, position_ids(mask, ids.shape[1]), None)
        for step in range(options.max_new_tokens):
            tokens = choose(logits, options.sampling, rng)
            self.token_times.append(time.perf_counter())
            last = step == options.max_new_tokens - 1
            deltas = [
                Delta(i, int(token), row.take(int(token), last)) for i, (row, token) in enumerate(zip(self.answers, tokens)) if row.running
            ]
            yield deltas
            running = [row.running for row in self.answers]
            if not any(running):
                return
            tokens = np.where(running, tokens, gen.pad_id).astype(np.int64)
            mask = np.concatenate([mask, np.ones((len(self.rows), 1), dtype=np.int64)], axis=1)
            logits, cache = self.engine.step(tokens[:, None], mask, position_ids(mask, 1), cache)

    def finish(self) -> list[Completion]:
        for _ in self:
            pass
        return self.completions
