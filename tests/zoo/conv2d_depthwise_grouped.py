"""Conv2d depthwise (groups=channels) then grouped (groups=2) over a fixed 16x16 image."""

import numpy as np
import torch
from torch import nn

from pipeline.spec import ModelSpec, TensorSpec, TrainResult

CHANNELS = 4
SIZE = 16


class Net(nn.Module):
    def __init__(self, channels: int, out: int):
        super().__init__()
        self.depthwise = nn.Conv2d(channels, channels, kernel_size=3, padding=1, groups=channels)
        self.grouped = nn.Conv2d(channels, out, kernel_size=3, padding=1, groups=2)

    def forward(self, x):
        return self.grouped(torch.relu(self.depthwise(x)))


ARGS = {"channels": CHANNELS, "out": 8}


def build(args):
    return Net(args["channels"], args["out"])


def train(seed):
    torch.manual_seed(seed)
    return TrainResult(build(ARGS).state_dict(), ARGS, {})


def sample_inputs(batch, rng):
    return {"image": rng.standard_normal((batch, CHANNELS, SIZE, SIZE)).astype(np.float32)}


SPEC = ModelSpec(
    name="conv2d_depthwise_grouped",
    inputs=(TensorSpec("image", "float32", ("batch", CHANNELS, SIZE, SIZE)),),
    outputs=(TensorSpec("features", "float32", ("batch", 8, SIZE, SIZE)),),
    build=build,
    train=train,
    sample_inputs=sample_inputs,
    example_request={"image": [[[0.5] * SIZE] * SIZE] * CHANNELS},
)
