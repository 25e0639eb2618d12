"""Linear + LayerNorm + GELU blocks over a dynamic sequence."""

import numpy as np
import torch
from torch import nn

from pipeline.spec import ModelSpec, TensorSpec, TrainResult

DIM = 16
SAMPLE_LENGTH = 12  # >= 2 and unlike the export batch of 4


class Net(nn.Module):
    def __init__(self, dim: int, out: int):
        super().__init__()
        self.body = nn.Sequential(
            nn.Linear(dim, dim),
            nn.LayerNorm(dim),
            nn.GELU(),
            nn.Linear(dim, out),
            nn.LayerNorm(out, elementwise_affine=False),
        )

    def forward(self, x):
        return self.body(x)


ARGS = {"dim": DIM, "out": 8}


def build(args):
    return Net(args["dim"], args["out"])


def train(seed):
    torch.manual_seed(seed)
    model = build(ARGS)
    with torch.no_grad():  # non-trivial affine parameters
        model.body[1].weight.normal_(1.0, 0.3)
        model.body[1].bias.normal_(0.0, 0.3)
    return TrainResult(model.state_dict(), ARGS, {})


def feed(batch, length, rng):
    return {"x": rng.standard_normal((batch, length, DIM)).astype(np.float32)}


def sample_inputs(batch, rng):
    return feed(batch, SAMPLE_LENGTH, rng)


def parity_cases(rng):
    return {f"seq={n} b={b}": feed(b, n, rng) for b, n in [(1, 1), (5, 1), (3, 2), (7, 33)]}


SPEC = ModelSpec(
    name="layernorm",
    inputs=(TensorSpec("x", "float32", ("batch", "seq", DIM)),),
    outputs=(TensorSpec("y", "float32", ("batch", "seq", 8)),),
    build=build,
    train=train,
    sample_inputs=sample_inputs,
    parity_cases=parity_cases,
    example_request={"x": [[0.1 * i + 0.01 * j for j in range(DIM)] for i in range(3)]},
)
