"""The generation loop's own logic on a scripted engine: sampling, stop rules, limits, text a whole character at a time.

The scripted engine answers logits whose best token is the next one of a script, so each
rule is checked against tokens known in advance; the real engines are tests/generation/test_chain.py's.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from pipeline.errors import RequestError
from pipeline.generation import text
from pipeline.generation.loop import Options, Run, check_limits, position_ids
from pipeline.generation.sampling import Sampling, choose
from pipeline.spec import Generation
from tests.generation.checkpoints import POSITIONS, VOCAB, tokenizer

EOS, PAD = 1, 2


@pytest.fixture(scope="module")
def tok(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tokenizer")
    tokenizer().save_pretrained(folder)
    return text.load(folder / "tokenizer.json")


def layout(**caps) -> Generation:
    return Generation(
        tokenizer=Path("tokenizer.json"),
        layers=1,
        kv_heads=1,
        head_size=2,
        vocab_size=VOCAB,
        eos_ids=(EOS,),
        pad_id=PAD,
        max_length=POSITIONS,
        **caps,
    )


class Scripted:
    """Each row's next token is its script's next id; the feeds it saw are kept."""

    name = "scripted"

    def __init__(self, scripts: list[list[int]]):
        self.scripts = scripts
        self.feeds: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []

    def step(self, input_ids, attention_mask, position_ids, cache):
        self.feeds.append((input_ids, attention_mask, position_ids))
        step = 0 if cache is None else cache + 1
        logits = np.zeros((len(self.scripts), VOCAB), dtype=np.float32)
        for row, script in enumerate(self.scripts):
            logits[row, script[min(step, len(script) - 1)]] = 1.0
        return logits, step


def test_left_padding_and_positions_from_the_mask():
    ids, mask = text.left_pad([[5, 6, 7], [8]], PAD)
    assert ids.tolist() == [[5, 6, 7], [PAD, PAD, 8]]
    assert mask.tolist() == [[1, 1, 1], [0, 0, 1]]
    assert position_ids(mask, 3).tolist() == [[0, 1, 2], [1, 1, 0]]  # padding sits at 1, masked
    grown = np.concatenate([mask, np.ones((2, 1), np.int64)], axis=1)
    assert position_ids(grown, 1).tolist() == [[3], [1]]


def test_rows_stop_at_eos_and_the_batch_when_all_have(tok):
    engine = Scripted([[40, 41, EOS, 42], [43, 44, 45, 46, 47]])
    run = Run(engine, layout(), tok, [[50, 51], [52]], Options(max_new_tokens=4))
    done = run.finish()
    assert done[0].tokens == [40, 41, EOS] and done[0].finish_reason == "stop"
    assert done[1].tokens == [43, 44, 45, 46] and done[1].finish_reason == "length"
    assert len(run.token_times) == 4 and len(engine.feeds) == 4  # the prefill and three steps: no step after the last token
    # After its EOS the finished row is fed the pad token; the other row its own.
    assert engine.feeds[3][0].tolist() == [[PAD], [45]]
    assert [f[1].shape[1] for f in engine.feeds] == [2, 3, 4, 5]


def test_ignore_eos_runs_to_max_new_tokens(tok):
    done = Run(Scripted([[EOS]]), layout(), tok, [[50]], Options(max_new_tokens=3, ignore_eos=True)).finish()
    assert done[0].tokens == [EOS] * 3 and done[0].finish_reason == "length"


def test_a_stop_string_ends_the_text_before_it_and_is_never_streamed(tok):
    words = tok.encode(" the lazy dog. The end").ids
    run = Run(Scripted([words]), layout(), tok, [[50]], Options(max_new_tokens=len(words), stop=("dog.",)))
    streamed = "".join(d.text for deltas in run for d in deltas)
    done = run.completions[0]
    assert done.text == streamed == " the lazy " and done.finish_reason == "stop"
    assert tok.decode(done.tokens).startswith(" the lazy dog")


def test_a_character_split_across_tokens_is_streamed_whole(tok):
    sentence = "Café crème 🙂 déjà vu"
    ids = tok.encode(sentence).ids
    assert len(ids) > len(sentence.split())  # byte-level tokens: some characters take several
    stream = text.TextStream(tok)
    pieces = [stream.push(i) for i in ids]
    assert "".join(pieces) + stream.rest() == sentence
    assert not any(text.INCOMPLETE in p for p in pieces)
    # The emoji's four bytes: nothing is handed out until the last one.
    emoji = tok.encode("🙂").ids
    stream = text.TextStream(tok)
    assert [stream.push(i) for i in emoji][:-1] == [""] * (len(emoji) - 1)


def test_greedy_is_the_argmax_and_sampling_is_seeded():
    rng = np.random.default_rng(0)
    logits = rng.standard_normal((4, VOCAB)).astype(np.float32)
    assert choose(logits, Sampling(), rng).tolist() == logits.argmax(axis=1).tolist()
    sampled = Sampling(greedy=False, temperature=0.9, top_p=0.95, seed=7)
    first = choose(logits, sampled, sampled.generator())
    assert choose(logits, sampled, sampled.generator()).tolist() == first.tolist()
    # top_k=1 and a tiny top_p leave the best token only.
    for narrow in (Sampling(greedy=False, top_k=1, seed=1), Sampling(greedy=False, top_p=1e-6, seed=1)):
        assert choose(logits, narrow, narrow.generator()).tolist() == logits.argmax(axis=1).tolist()


def test_top_p_keeps_the_smallest_set_that_reaches_p():
    # Probabilities 0.5, 0.3, 0.2: top_p 0.7 keeps the first two, never the third.
    logits = np.log(np.array([[0.5, 0.3, 0.2]]))
    picks = {int(choose(logits, s, s.generator())[0]) for s in (Sampling(greedy=False, top_p=0.7, seed=i) for i in range(200))}
    assert picks == {0, 1}


@pytest.mark.parametrize(
    "bad, message",
    [
        ({"temperature": 0.0}, "temperature is 0.0"),
        ({"top_p": 0.0}, "top_p is 0.0"),
        ({"top_k": -1}, "top_k is -1"),
    ],
)
def test_bad_sampling_is_refused(bad, message):
    with pytest.raises(RequestError, match=message):
        Sampling(greedy=False, **bad)


@pytest.mark.parametrize(
    "rows, new, message",
    [
        ([], 4, "no prompt was given"),
        ([[5]] * 9, 4, "9 prompts in one batch, the model's cap is 8"),
        ([[5]], 0, "max_new_tokens is 0, the model's cap is 256"),
        ([[5]], 257, "max_new_tokens is 257, the model's cap is 256"),
        (
            [[5] * (POSITIONS - 6)],
            7,
            f"a prompt of {POSITIONS - 6} tokens plus max_new_tokens 7 is {POSITIONS + 1} positions, the model's maximum length is {POSITIONS}",
        ),
    ],
)
def test_limits_are_checked_before_any_work(tok, rows, new, message):
    with pytest.raises(RequestError, match=message):
        check_limits(layout(), rows, new)
    engine = Scripted([[40]])
    with pytest.raises(RequestError):
        Run(engine, layout(), tok, rows, Options(max_new_tokens=new))
    assert engine.feeds == []
