"""A model whose answers are large, as a user would write it: each token becomes a row of
WIDTH floats, all equal to token / 3 (fixed weights, nothing learned).

The served size tests use it (tests/serving/test_serve.py). As JSON a token's row is about
310 KB: 8 tokens answer 2.5 MB, past TorchServe's stock 1 MiB frame limit (GPT-2's 5-token
example was 5 MB); 64 tokens answer 20 MB, past the contract's 16 MiB per answer.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from pipeline.spec import ModelSpec, TensorSpec, TrainResult

VOCAB = 4
WIDTH = 16384
MAX_LENGTH = 64


class Wide(nn.Module):
    def __init__(self):
        super().__init__()
        self.table = nn.Embedding(VOCAB, WIDTH)

    def forward(self, tokens):
        return self.table(tokens)


def build(args):
    return Wide()


def train(seed):
    model = Wide()
    with torch.no_grad():
        model.table.weight.copy_((torch.arange(VOCAB, dtype=torch.float32) / 3)[:, None].expand(VOCAB, WIDTH))
    return TrainResult(model.state_dict(), {}, {})


def sample_inputs(batch, rng):
    # A length unlike the export's batch of 4, or torch.export would merge the two axes.
    return {"tokens": rng.integers(0, VOCAB, size=(batch, 12)).astype(np.int64)}


def parity_cases(rng):
    return {f"seq={n}": {"tokens": rng.integers(0, VOCAB, size=(2, n)).astype(np.int64)} for n in (1, MAX_LENGTH)}


SPEC = ModelSpec(
    name="wide_model",
    inputs=(TensorSpec("tokens", "int64", ("batch", "seq"), low=0, high=VOCAB - 1),),
    outputs=(TensorSpec("rows", "float32", ("batch", "seq", WIDTH)),),
    build=build,
    train=train,
    sample_inputs=sample_inputs,
    parity_cases=parity_cases,
    max_rows_per_request=8,
    max_lengths={"seq": MAX_LENGTH},
    example_request={"tokens": [1, 2, 3]},
)
