"""The next token from the last logits: greedy, or sampled with temperature, top-k and top-p from a seeded generator.

The filters follow transformers' logits processors (`TemperatureLogitsWarper`,
`TopKLogitsWarper`, `TopPLogitsWarper`): temperature first, then top-k, then top-p, which
keeps the smallest set of most likely tokens whose probability reaches `top_p` (at least one).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from pipeline.errors import RequestError


@dataclass(frozen=True)
class Sampling:
    """How to pick each token; `greedy` ignores the rest."""

    greedy: bool = True
    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0
    seed: int | None = None

    def __post_init__(self):
        if not (self.temperature > 0 and np.isfinite(self.temperature)):
            raise RequestError("generate", f"temperature is {self.temperature}", "use a temperature above 0 (1.0 samples as trained)")
        if not 0 < self.top_p <= 1:
            raise RequestError("generate", f"top_p is {self.top_p}", "use a top_p in (0, 1]; 1 keeps every token")
        if self.top_k < 0:
            raise RequestError("generate", f"top_k is {self.top_k}", "use a top_k of 0 (every token) or more")

    def generator(self) -> np.random.Generator:
        return np.random.default_rng(self.seed)

    def describe(self) -> dict:
        if self.greedy:
            return {"greedy": True}
        return {"greedy": False, "temperature": self.temperature, "top_k": self.top_k, "top_p": self.top_p, "seed": self.seed}


def choose(logits: np.ndarray, sampling: Sampling, rng: np.random.Generator) -> np.ndarray:
    """One token id per row of `logits` [batch, vocab]."""
    if sampling.greedy:
        return np.argmax(logits, axis=-1).astype(np.int64)
    scores = logits.astype(np.float64) / sampling.temperature
    if 0 < sampling.top_k < scores.shape[-1]:
        kth = np.partition(scores, -sampling.top_k, axis=-1)[:, -sampling.top_k][:, None]
        scores = np.where(scores < kth, -np.inf, scores)
    probs = softmax(scores)
    if sampling.top_p < 1:
        order = np.argsort(probs, axis=-1)  # ascending, as transformers sorts
        ranked = np.take_along_axis(probs, order, axis=-1)
        drop_sorted = np.cumsum(ranked, axis=-1) <= 1 - sampling.top_p
        drop_sorted[:, -1] = False  # the most likely token always stays
        drop = np.zeros_like(drop_sorted)
        np.put_along_axis(drop, order, drop_sorted, axis=-1)
        probs = softmax(np.where(drop, -np.inf, scores))
    return np.array([rng.choice(probs.shape[-1], p=row) for row in probs], dtype=np.int64)


def softmax(scores: np.ndarray) -> np.ndarray:
    shifted = np.exp(scores - scores.max(axis=-1, keepdims=True))
    return shifted / shifted.sum(axis=-1, keepdims=True)
