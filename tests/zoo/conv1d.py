"""A Conv1d stack over a dynamic length; padding keeps the length."""

import numpy as np
import torch
from torch import nn

from pipeline.spec import ModelSpec, TensorSpec, TrainResult

CHANNELS = 4
SAMPLE_LENGTH = 12  # >= 2 and unlike the export batch of 4


class Net(nn.Module):
    def __init__(self, channels: int, hidden: int, out: int):
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv1d(channels, hidden, kernel_size=3, padding="same"),
            nn.ReLU(),
            nn.Conv1d(hidden, hidden, kernel_size=5, padding=2),
            nn.Tanh(),
            nn.Conv1d(hidden, out, kernel_size=3, padding=2, dilation=2),
        )

    def forward(self, x):
        return self.body(x)


ARGS = {"channels": CHANNELS, "hidden": 16, "out": 8}


def build(args):
    return Net(args["channels"], args["hidden"], args["out"])


def train(seed):
    torch.manual_seed(seed)
    return TrainResult(build(ARGS).state_dict(), ARGS, {})


def feed(batch, length, rng):
    return {"x": rng.standard_normal((batch, CHANNELS, length)).astype(np.float32)}


def sample_inputs(batch, rng):
    return feed(batch, SAMPLE_LENGTH, rng)


def parity_cases(rng):
    return {f"length={n} b={b}": feed(b, n, rng) for b, n in [(1, 1), (5, 1), (3, 2), (7, 33)]}


SPEC = ModelSpec(
    name="conv1d",
    inputs=(TensorSpec("x", "float32", ("batch", CHANNELS, "length")),),
    outputs=(TensorSpec("y", "float32", ("batch", 8, "length")),),
    build=build,
    train=train,
    sample_inputs=sample_inputs,
    parity_cases=parity_cases,
    example_request={"x": [[0.1, 0.2, 0.3, 0.4, 0.5]] * CHANNELS},
)
