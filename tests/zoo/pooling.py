"""MaxPool2d, AvgPool2d, AdaptiveAvgPool2d((1, 1)) and AdaptiveMaxPool2d((2, 2)): four outputs."""

import numpy as np
import torch
from torch import nn

from pipeline.spec import ModelSpec, TensorSpec, TrainResult


class Net(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(3, channels, kernel_size=3, padding=1)
        self.max = nn.MaxPool2d(2)
        self.avg = nn.AvgPool2d(kernel_size=3, stride=2, padding=1)
        self.gap = nn.AdaptiveAvgPool2d((1, 1))
        self.amax = nn.AdaptiveMaxPool2d((2, 2))

    def forward(self, x):
        h = self.conv(x)
        return self.max(h), self.avg(h), self.gap(h).flatten(1), self.amax(h)


ARGS = {"channels": 8}


def build(args):
    return Net(args["channels"])


def train(seed):
    torch.manual_seed(seed)
    return TrainResult(build(ARGS).state_dict(), ARGS, {})


def sample_inputs(batch, rng):
    return {"image": rng.standard_normal((batch, 3, 8, 8)).astype(np.float32)}


SPEC = ModelSpec(
    name="pooling",
    inputs=(TensorSpec("image", "float32", ("batch", 3, 8, 8)),),
    outputs=(
        TensorSpec("max_pool", "float32", ("batch", 8, 4, 4)),
        TensorSpec("avg_pool", "float32", ("batch", 8, 4, 4)),
        TensorSpec("global_avg", "float32", ("batch", 8)),
        TensorSpec("adaptive_max", "float32", ("batch", 8, 2, 2)),
    ),
    build=build,
    train=train,
    sample_inputs=sample_inputs,
    example_request={"image": [[[0.1 * j for j in range(8)]] * 8] * 3},
)
