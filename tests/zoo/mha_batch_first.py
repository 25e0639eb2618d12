"""Self-attention with nn.MultiheadAttention(batch_first=True) over a dynamic sequence."""

import numpy as np
import torch
from torch import nn

from pipeline.spec import ModelSpec, TensorSpec, TrainResult

DIM = 16
SAMPLE_LENGTH = 12  # >= 2 and unlike the export batch of 4


class Net(nn.Module):
    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.attn = nn.MultiheadAttention(dim, heads, batch_first=True)

    def forward(self, x):
        out, _ = self.attn(x, x, x, need_weights=False)
        return out


ARGS = {"dim": DIM, "heads": 2}


def build(args):
    return Net(args["dim"], args["heads"])


def train(seed):
    torch.manual_seed(seed)
    return TrainResult(build(ARGS).state_dict(), ARGS, {})


def feed(batch, length, rng):
    return {"x": rng.standard_normal((batch, length, DIM)).astype(np.float32)}


def sample_inputs(batch, rng):
    return feed(batch, SAMPLE_LENGTH, rng)


def parity_cases(rng):
    return {f"seq={n} b={b}": feed(b, n, rng) for b, n in [(1, 1), (5, 1), (3, 2), (7, 33)]}


SPEC = ModelSpec(
    name="mha_batch_first",
    inputs=(TensorSpec("x", "float32", ("batch", "seq", DIM)),),
    outputs=(TensorSpec("y", "float32", ("batch", "seq", DIM)),),
    build=build,
    train=train,
    sample_inputs=sample_inputs,
    parity_cases=parity_cases,
    example_request={"x": [[0.1 * i] * DIM for i in range(3)]},
)
