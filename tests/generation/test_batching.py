"""Continuous batching on the exported graph: rows that join and leave between steps get the tokens they get alone."""

from __future__ import annotations

import pytest

from pipeline.generation import load
from pipeline.generation.batching import Batcher
from pipeline.generation.loop import Options
from pipeline.settings import Settings
from tests.generation.checkpoints import transformers_greedy

PROMPTS = ["Hello world!", "The quick brown fox", "A", "Once upon a time there was"]


@pytest.fixture(scope="module")
def generator(small_llama):
    folder, root = small_llama
    return load.load(Settings(model=f"hf:{folder}", root=root))


def test_rows_that_join_and_leave_between_steps_get_their_greedy_tokens(small_llama, generator):
    folder, _ = small_llama
    batcher = Batcher(generator.engine, generator.gen, generator.tokenizer, max_rows=3)
    ids = generator.encode(PROMPTS)
    lengths = {0: 20, 1: 12, 2: 16, 3: 18}
    arrivals = {0: [0], 3: [1], 5: [2, 3]}  # step -> prompts that arrive before it; 3 waits for a free row
    rows, seen, steps = {}, {}, 0
    while steps == 0 or len(batcher):
        for i in arrivals.get(steps, []):
            rows[i] = batcher.add(i, ids[i], Options(max_new_tokens=lengths[i]))
        for key, step in batcher.step().items():
            seen.setdefault(key, []).append(step.token)
        assert len(batcher.active) <= 3
        steps += 1
    expected = [transformers_greedy(folder, [p], lengths[i])[0] for i, p in enumerate(PROMPTS)]
    assert [rows[i].completion.tokens for i in range(4)] == expected
    assert [seen[i] for i in range(4)] == expected
    assert len({tuple(t) for t in expected}) == 4  # not one repeated answer
    # Prompt 3 waited for a row: it started only once prompt 1 (12 tokens from step 3) had left.
    assert steps < sum(lengths.values())  # rows shared steps


def test_a_dropped_row_is_out_of_the_next_step(generator):
    batcher = Batcher(generator.engine, generator.gen, generator.tokenizer, max_rows=4)
    ids = generator.encode(PROMPTS[:2])
    kept = batcher.add("kept", ids[0], Options(max_new_tokens=10))
    gone = batcher.add("gone", ids[1], Options(max_new_tokens=10))
    batcher.step()
    batcher.step()
    batcher.drop(["gone"])
    out = batcher.step()
    assert set(out) == {"kept"} and len(batcher.active) == 1
    assert len(gone.completion.tokens) == 2 and gone.completion.finish_reason is None
    while len(batcher):
        batcher.step()
    assert len(kept.completion.tokens) == 10 and kept.completion.finish_reason == "length"
    assert batcher.mask is None and batcher.cache is None


def test_the_limits_are_checked_when_a_row_is_added(generator):
    batcher = Batcher(generator.engine, generator.gen, generator.tokenizer, max_rows=2)
    with pytest.raises(Exception, match="max_new_tokens"):
        batcher.add("x", [5, 6], Options(max_new_tokens=generator.gen.max_new_tokens + 1))
    assert len(batcher) == 0
