"""Parity that proves generation: logits step by step with the cache, and greedy tokens as transformers' own `generate` picks them.

- **Steps.** A prefill and `STEPS` decode steps run on eager (`CachedDecoder`, its cache as
  torch tensors) and on the engine, each fed eager's greedy token, so both see the same
  inputs at every step; each step's logits are compared under the model's tolerance.

Eager's side is made once (`reference`), before any engine loads, and kept: a few steps'
logits and tokens. The model and an engine are never in memory together.
- **Greedy tokens.** The generation loop on the engine (`loop.Run`) against
  `model.generate(do_sample=False)` with transformers' own cache, `GREEDY_TOKENS` new tokens.
  Where they part, the step and eager's margin between its two best logits are reported:
  a margin within twice the tolerance's bound is a near tie (two correct engines may pick
  either token, and every later token then differs), not a failure.

Both run at batch 1 and on a left-padded batch of three prompts of different lengths.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np
import torch
from tokenizers import Tokenizer
from transformers import GenerationConfig

from pipeline.generation import text
from pipeline.generation.decoder import CachedDecoder
from pipeline.generation.engines import EagerEngine, Engine
from pipeline.generation.loop import Options, Run, position_ids
from pipeline.spec import Generation, Tolerance

STEPS = 8
GREEDY_TOKENS = 32
PROMPTS = (
    "The quick brown fox jumps over the lazy dog.",
    "Hello world!",
    "Where is the nearest train station? I have to catch the last train home tonight.",
)


def cases(tokenizer: Tokenizer, gen: Generation, new_tokens: int) -> dict[str, list[list[int]]]:
    """Batch 1, and a left-padded batch of three prompts of different lengths, cut to leave room for the new tokens."""
    rows = [row[: max(gen.max_length - new_tokens, 1)] for row in text.encode(tokenizer, PROMPTS, gen.bos_id)]
    return {
        f"generation b=1 prompt={len(rows[0])}": rows[:1],
        f"generation b=3 left-padded prompts={[len(r) for r in rows]}": rows,
    }


@dataclass(frozen=True)
class Reference:
    """Eager's answers for one case, made once and then held against each engine: the tokens each
    decode step was fed and its logits, and transformers' greedy tokens with each step's logits."""

    case: str
    rows: list[list[int]]
    fed: list[np.ndarray]  # per decode step, the token each row was fed [batch, 1] (eager's greedy pick)
    steps: list[np.ndarray]  # eager's last logits [batch, vocab]: the prefill's, then each decode step's
    generated: list[list[int]]  # transformers' greedy tokens per row, through the EOS
    generated_logits: list[np.ndarray]  # its logits at each new token [batch, vocab]


def reference(
    model: torch.nn.Module, gen: Generation, rows: Sequence[Sequence[int]], case: str, steps: int = STEPS, new_tokens: int = GREEDY_TOKENS
) -> Reference:
    """Eager with its cache over the prefill and `steps` decode steps, and `model.generate(do_sample=False)`."""
    if not isinstance(model, CachedDecoder):
        raise TypeError(f"generation parity runs a CachedDecoder, not a {type(model).__name__}")
    eager = EagerEngine(model, gen)
    ids, mask = text.left_pad(rows, gen.pad_id)
    logits, cache = eager.step(ids, mask, position_ids(mask, ids.shape[1]), None)
    fed, seen = [], [logits]
    for _ in range(steps):
        token = np.argmax(logits, axis=-1).astype(np.int64)[:, None]
        mask = np.concatenate([mask, np.ones_like(token)], axis=1)
        logits, cache = eager.step(token, mask, position_ids(mask, 1), cache)
        fed.append(token)
        seen.append(logits)
    del cache
    generated, generated_logits = transformers_greedy(model, gen, rows, new_tokens)
    return Reference(case, [list(r) for r in rows], fed, seen, generated, generated_logits)


def transformers_greedy(
    model: CachedDecoder, gen: Generation, rows: Sequence[Sequence[int]], new_tokens: int
) -> tuple[list[list[int]], list[np.ndarray]]:
    """transformers' own `generate(do_sample=False)` with its own cache, left-padded: each row's tokens (through the EOS) and each step's logits."""
    ids, mask = text.left_pad(rows, gen.pad_id)
    # A generation config of our own: greedy only, whatever the checkpoint's (a repetition penalty, sampling) says.
    config = GenerationConfig(
        max_new_tokens=new_tokens,
        do_sample=False,
        pad_token_id=gen.pad_id,
        eos_token_id=list(gen.eos_ids) or None,
        bos_token_id=gen.bos_id,
        return_dict_in_generate=True,
        output_logits=True,
    )
    with torch.inference_mode():
        out = model.model.generate(  # type: ignore[operator]  # GenerationMixin.generate, which mypy sees through nn.Module.__getattr__
            input_ids=torch.from_numpy(ids),
            attention_mask=torch.from_numpy(mask),
            generation_config=config,
        )
    tokens = out.sequences[:, ids.shape[1] :].numpy()
    return [_until_eos(row.tolist(), gen.eos_ids) for row in tokens], [step.float().numpy() for step in out.logits]


@dataclass(frozen=True)
class StepLogits:
    """One step's logits of one engine and eager's, for the parity stage's comparison."""

    case: str
    want: np.ndarray
    got: np.ndarray


def step_logits(engine: Engine, gen: Generation, ref: Reference) -> list[StepLogits]:
    """The engine over the same prefill and decode steps, fed the tokens eager was fed, against eager's logits."""
    ids, mask = text.left_pad(ref.rows, gen.pad_id)
    got, cache = engine.step(ids, mask, position_ids(mask, ids.shape[1]), None)
    out = [StepLogits(f"{ref.case} prefill", ref.steps[0], got)]
    for step, token in enumerate(ref.fed, start=1):
        mask = np.concatenate([mask, np.ones_like(token)], axis=1)
        got, cache = engine.step(token, mask, position_ids(mask, 1), cache)
        out.append(StepLogits(f"{ref.case} decode step {step}", ref.steps[step], got))
    return out


@dataclass(frozen=True)
class GreedyRow:
    """One prompt's greedy tokens on an engine against transformers' `generate`."""

    engine: str
    case: str
    row: int
    tokens: int
    same: bool
    parted_at: int | None = None
    margin: float | None = None
    bound: float | None = None
    near_tie: bool = False

    @property
    def passed(self) -> bool:
        return self.same or self.near_tie

    def to_json(self) -> dict:
        return {**asdict(self), "passed": self.passed}


def greedy_rows(engine: Engine, gen: Generation, tokenizer: Tokenizer, ref: Reference, tol: Tolerance) -> list[GreedyRow]:
    """Greedy tokens of the loop on `engine` against transformers' `generate`, row by row."""
    new_tokens = len(ref.generated_logits)
    got = Run(engine, gen, tokenizer, ref.rows, Options(max_new_tokens=new_tokens)).finish()
    results = []
    for row, completion in enumerate(got):
        want = ref.generated[row]
        parted = next((i for i, (w, g) in enumerate(zip(want, completion.tokens)) if w != g), None)
        if parted is None and len(want) != len(completion.tokens):
            parted = min(len(want), len(completion.tokens))
        if parted is None:
            results.append(GreedyRow(engine.name, ref.case, row, len(want), True))
            continue
        step = ref.generated_logits[min(parted, new_tokens - 1)][row].astype(np.float64)
        top = np.sort(step)[-2:]
        margin = float(top[1] - top[0])
        bound = tol.atol + tol.rtol * float(abs(top[1])) + tol.scaled * float(np.abs(step).max())
        results.append(GreedyRow(engine.name, ref.case, row, len(want), False, parted, margin, bound, near_tie=margin <= 2 * bound))
    return results


def _until_eos(tokens: list[int], eos: Sequence[int]) -> list[int]:
    """The tokens through the first EOS (what the loop returns; generate pads after it)."""
    for i, token in enumerate(tokens):
        if token in eos:
            return tokens[: i + 1]
    return tokens
