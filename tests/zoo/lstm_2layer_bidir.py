"""nn.LSTM, 2 layers, bidirectional, batch_first: the full sequence output."""

import numpy as np
import torch
from torch import nn

from pipeline.spec import ModelSpec, TensorSpec, TrainResult

FEATURES = 8
HIDDEN = 16
SAMPLE_STEPS = 12  # >= 2 and unlike the export batch of 4


class Net(nn.Module):
    def __init__(self, features: int, hidden: int):
        super().__init__()
        self.rnn = nn.LSTM(features, hidden, num_layers=2, bidirectional=True, batch_first=True)

    def forward(self, x):
        seq, _ = self.rnn(x)
        return seq


ARGS = {"features": FEATURES, "hidden": HIDDEN}


def build(args):
    return Net(args["features"], args["hidden"])


def train(seed):
    torch.manual_seed(seed)
    return TrainResult(build(ARGS).state_dict(), ARGS, {})


def feed(batch, steps, rng):
    return {"x": rng.standard_normal((batch, steps, FEATURES)).astype(np.float32)}


def sample_inputs(batch, rng):
    return feed(batch, SAMPLE_STEPS, rng)


def parity_cases(rng):
    return {f"steps={n} b={b}": feed(b, n, rng) for b, n in [(1, 1), (5, 1), (3, 2), (7, 33)]}


# torch.export fixes a recurrent layer's time axis to the example's length
# (https://github.com/pytorch/pytorch/issues/115092): the exported graph would answer
# only that length, so the export check refuses it. The TorchScript-based exporter keeps
# the axis dynamic; parity checks its graph at lengths 1, 12 and 33 all the same.
LIMITATION = (
    "torch.export fixes the time axis ([pytorch/pytorch#115092](https://github.com/pytorch/pytorch/issues/115092)): exported by the TorchScript-based "
    "fallback, exporter_fallback=True in the spec"
)

SPEC = ModelSpec(
    name="lstm_2layer_bidir",
    exporter_fallback=True,
    inputs=(TensorSpec("x", "float32", ("batch", "steps", FEATURES)),),
    outputs=(TensorSpec("sequence", "float32", ("batch", "steps", 2 * HIDDEN)),),
    build=build,
    train=train,
    sample_inputs=sample_inputs,
    parity_cases=parity_cases,
    example_request={"x": [[0.1 * i] * FEATURES for i in range(3)]},
)
