"""Parity that proves generation: logits step by step with the cache, and greedy tokens as transformers' own `generate` picks them.

- **Steps.** A prefill and `STEPS` decode steps run on eager (`CachedDecoder`, its cache as
  torch tensors) and on the engine, each fed eager's greedy token, so both see the same
  inputs at every step; each step's logits are compared under the model's tolerance.
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
class StepLogits:
    """One step's logits of one engine and eager's, for the parity stage's comparison."""

    case: str
    want: np.ndarray
    got: np.ndarray


def step_logits(
    eager: EagerEngine, engine: Engine, gen: Generation, rows: Sequence[Sequence[int]], case: str, steps: int = STEPS
) -> list[StepLogits]:
    """The prefill's and each decode step's last logits on both, each fed eager's greedy token."""
    ids, mask = text.left_pad(rows, gen.pad_id)
    pos = position_ids(mask, ids.shape[1])
    want, want_cache = eager.step(ids, mask, pos, None)
    got, got_cache = engine.step(ids, mask, pos, None)
    out = [StepLogits(f"{case} prefill", want, got)]
    for step in range(1, steps + 1):
        token = np.argmax(want, axis=-1).astype(np.int64)[:, None]
        mask = np.concatenate([mask, np.ones_like(token)], axis=1)
        pos = position_ids(mask, 1)
        want, want_cache = eager.step(token, mask, pos, want_cache)
        got, got_cache = engine.step(token, mask, pos, got_cache)
        out.append(StepLogits(f"{case} decode step {step}", want, got))
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


def greedy_rows(
    model: torch.nn.Module,
    engine: Engine,
    gen: Generation,
    tokenizer: Tokenizer,
    rows: Sequence[Sequence[int]],
    case: str,
    tol: Tolerance,
    new_tokens: int = GREEDY_TOKENS,
) -> list[GreedyRow]:
    """Greedy tokens of the loop on `engine` against `model.generate(do_sample=False)`, row by row."""
    if not isinstance(model, CachedDecoder):
        raise TypeError(f"greedy parity runs a CachedDecoder's transformers model, not a {type(model).__name__}")
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
    want_ids = out.sequences[:, ids.shape[1] :].numpy()
    logits = [step.float().numpy() for step in out.logits]
    got = Run(engine, gen, tokenizer, rows, Options(max_new_tokens=new_tokens)).finish()
    results = []
    for row, completion in enumerate(got):
        want = _until_eos(want_ids[row].tolist(), gen.eos_ids)
        parted = next((i for i, (w, g) in enumerate(zip(want, completion.tokens)) if w != g), None)
        if parted is None and len(want) != len(completion.tokens):
            parted = min(len(want), len(completion.tokens))
        if parted is None:
            results.append(GreedyRow(engine.name, case, row, len(want), True))
            continue
        step = logits[min(parted, len(logits) - 1)][row].astype(np.float64)
        top = np.sort(step)[-2:]
        margin = float(top[1] - top[0])
        bound = tol.atol + tol.rtol * float(abs(top[1])) + tol.scaled * float(np.abs(step).max())
        results.append(GreedyRow(engine.name, case, row, len(want), False, parted, margin, bound, near_tie=margin <= 2 * bound))
    return results


def _until_eos(tokens: list[int], eos: Sequence[int]) -> list[int]:
    """The tokens through the first EOS (what the loop returns; generate pads after it)."""
    for i, token in enumerate(tokens):
        if token in eos:
            return tokens[: i + 1]
    return tokens
