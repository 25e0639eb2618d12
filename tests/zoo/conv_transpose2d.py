"""ConvTranspose2d upsampling: (4, 8, 8) -> (2, 16, 16)."""

import numpy as np
import torch
from torch import nn

from pipeline.spec import ModelSpec, TensorSpec, TrainResult


class Net(nn.Module):
    def __init__(self, hidden: int):
        super().__init__()
        self.up = nn.ConvTranspose2d(4, hidden, kernel_size=4, stride=2, padding=1)  # 8 -> 16
        self.mix = nn.ConvTranspose2d(hidden, 2, kernel_size=3, stride=1, padding=1)  # 16 -> 16

    def forward(self, x):
        return self.mix(torch.relu(self.up(x)))


ARGS = {"hidden": 8}


def build(args):
    return Net(args["hidden"])


def train(seed):
    torch.manual_seed(seed)
    return TrainResult(build(ARGS).state_dict(), ARGS, {})


def sample_inputs(batch, rng):
    return {"x": rng.standard_normal((batch, 4, 8, 8)).astype(np.float32)}


SPEC = ModelSpec(
    name="conv_transpose2d",
    inputs=(TensorSpec("x", "float32", ("batch", 4, 8, 8)),),
    outputs=(TensorSpec("y", "float32", ("batch", 2, 16, 16)),),
    build=build,
    train=train,
    sample_inputs=sample_inputs,
    example_request={"x": [[[0.5] * 8] * 8] * 4},
)
