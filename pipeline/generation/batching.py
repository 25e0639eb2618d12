"""Continuous batching: the rows of many requests share each decode step, joining and leaving between steps.

A server's requests arrive and end at different times. `Batcher.step()` runs one decode step
for every row in the batch (one engine call), then prefills the rows that arrived since
(each alone, up to `max_rows` in all), so a new request waits at most one step to start and
never for another to end. Every row keeps its own sampling, seed, stop strings and limits.

The batch's cache is left-padded: a row that joins, or what stays when rows leave, is
regrouped (through the host, once per change of members) so that every row's newest token
sits in the last column; the attention mask marks each row's padding and the position ids
come from it, as for a batch of prompts in `loop.Run`. A row that leaves (it finished, or
its client went away: `drop`) is out at once, so a disconnected client costs at most the one
step already running.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Hashable, Iterable, Sequence
from dataclasses import dataclass, field

import numpy as np
from tokenizers import Tokenizer

from pipeline.generation.engines import Cache, Engine
from pipeline.generation.loop import Options, Row, check_limits, position_ids
from pipeline.generation.sampling import choose
from pipeline.spec import Generation


@dataclass(frozen=True)
class Step:
    """What one step gave a row: its token, and the text that became whole with it."""

    token: int
    text: str


@dataclass
class Member:
    """One row in (or waiting for) the batch."""

    key: Hashable
    prompt: list[int]
    options: Options
    row: Row
    rng: np.random.Generator = field(repr=False)
    pending: int = 0  # the last token chosen, fed to the next step
    chosen: int = 0  # tokens chosen so far


class Batcher:
    """The rows of every request in flight, stepped together."""

    def __init__(self, engine: Engine, gen: Generation, tokenizer: Tokenizer, max_rows: int):
        if max_rows < 1:
            raise ValueError(f"max_rows must be at least 1, got {max_rows}")
        self.engine, self.gen, self.tokenizer, self.max_rows = engine, gen, tokenizer, max_rows
        self.active: list[Member] = []
        self.waiting: deque[Member] = deque()
        self.mask: np.ndarray | None = None  # [rows, positions]: 0 where a row is padded on the left
        self.cache: Cache | None = None
        self.dropped: set[Hashable] = set()  # rows `drop` takes out at its regrouping
        self.steps = 0  # engine calls that decoded the batch (prefills aside)

    def __len__(self) -> int:
        return len(self.active) + len(self.waiting)

    def add(self, key: Hashable, prompt: Sequence[int], options: Options) -> Row:
        """Queue one prompt's row under `key` (checked against the model's limits first); its answer grows in the Row."""
        check_limits(self.gen, [prompt], options.max_new_tokens)
        eos = set() if options.ignore_eos else set(self.gen.eos_ids)
        member = Member(key, list(prompt), options, Row(self.tokenizer, len(prompt), options, eos), options.sampling.generator())
        self.waiting.append(member)
        return member.row

    def drop(self, keys: Iterable[Hashable]) -> None:
        """Take these rows out now (a client went away), their cache with them; their answers stop where they are."""
        keys = set(keys)
        self.waiting = deque(m for m in self.waiting if m.key not in keys)
        self.dropped = keys & {m.key for m in self.active}
        if self.dropped:
            self._regroup([])

    def clear(self) -> list[Hashable]:
        """Forget every row (after an engine failure); the keys that were in flight."""
        keys = [m.key for m in self.active] + [m.key for m in self.waiting]
        self.active, self.waiting, self.mask, self.cache, self.dropped = [], deque(), None, None, set()
        return keys

    def step(self) -> dict[Hashable, Step]:
        """One token for every row: a decode step for the batch, then a prefill for each row that joins."""
        out: dict[Hashable, Step] = {}
        if self.active:
            assert self.mask is not None
            tokens = np.array([[m.pending] for m in self.active], dtype=np.int64)
            self.mask = np.concatenate([self.mask, np.ones((len(self.active), 1), dtype=np.int64)], axis=1)
            logits, self.cache = self.engine.step(tokens, self.mask, position_ids(self.mask, 1), self.cache)
            self.steps += 1
            for member, row_logits in zip(self.active, logits):
                out[member.key] = self._choose(member, row_logits)
        joined: list[tuple[Member, np.ndarray, Cache]] = []
        while self.waiting and len(self.active) + len(joined) < self.max_rows:
            member = self.waiting.popleft()
            ids = np.array([member.prompt], dtype=np.int64)
            mask = np.ones_like(ids)
            logits, cache = self.engine.step(ids, mask, position_ids(mask, ids.shape[1]), None)
            out[member.key] = self._choose(member, logits[0])
            joined.append((member, mask, cache))
        self._regroup(joined)
        return out

    def _choose(self, member: Member, logits: np.ndarray) -> Step:
        token = int(choose(logits[None, :], member.options.sampling, member.rng)[0])
        member.chosen += 1
        member.pending = token
        return Step(token, member.row.take(token, last=member.chosen == member.options.max_new_tokens))

    def _regroup(self, joined: list[tuple[Member, np.ndarray, Cache]]) -> None:
        """The batch without its finished and dropped rows and with the joined ones, left-padded to its longest row."""
        stay = [i for i, m in enumerate(self.active) if m.row.running and m.key not in self.dropped]
        joined = [j for j in joined if j[0].row.running]
        self.dropped = set()
        if len(stay) == len(self.active) and not joined:
            return
        parts: list[tuple[Member, np.ndarray, list[np.ndarray]]] = []
        if stay:
            assert self.mask is not None
            host = self.engine.to_host(self.cache)
            parts += [(self.active[i], self.mask[i], [a[i] for a in host]) for i in stay]
        for member, mask, cache in joined:
            parts.append((member, mask[0], [a[0] for a in self.engine.to_host(cache)]))
        self.active = [member for member, _, _ in parts]
        if not parts:
            self.mask, self.cache = None, None
            return
        lengths = [int(mask.sum()) for _, mask, _ in parts]  # a row's own tokens are its mask's last ones
        width = max(lengths)
        mask = np.zeros((len(parts), width), dtype=np.int64)
        arrays = [np.zeros((len(parts), *a.shape[:-2], width, a.shape[-1]), dtype=a.dtype) for a in parts[0][2]]
        for r, ((_, _, rows), n) in enumerate(zip(parts, lengths)):
            mask[r, width - n :] = 1
            for array, row in zip(arrays, rows):
                array[r, ..., width - n :, :] = row[..., row.shape[-2] - n :, :]
        self.mask, self.cache = mask, self.engine.from_host(arrays)
