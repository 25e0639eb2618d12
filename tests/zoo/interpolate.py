"""F.interpolate x2: nearest and bilinear (align_corners=False), after a 1x1 conv; two outputs."""

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from pipeline.spec import ModelSpec, TensorSpec, TrainResult


class Net(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.mix = nn.Conv2d(channels, channels, kernel_size=1)

    def forward(self, x):
        h = self.mix(x)
        nearest = F.interpolate(h, scale_factor=2, mode="nearest")
        bilinear = F.interpolate(h, scale_factor=2, mode="bilinear", align_corners=False)
        return nearest, bilinear


ARGS = {"channels": 3}


def build(args):
    return Net(args["channels"])


def train(seed):
    torch.manual_seed(seed)
    return TrainResult(build(ARGS).state_dict(), ARGS, {})


def sample_inputs(batch, rng):
    return {"image": rng.standard_normal((batch, 3, 8, 8)).astype(np.float32)}


SPEC = ModelSpec(
    name="interpolate",
    inputs=(TensorSpec("image", "float32", ("batch", 3, 8, 8)),),
    outputs=(
        TensorSpec("nearest", "float32", ("batch", 3, 16, 16)),
        TensorSpec("bilinear", "float32", ("batch", 3, 16, 16)),
    ),
    build=build,
    train=train,
    sample_inputs=sample_inputs,
    example_request={"image": [[[0.1 * j for j in range(8)]] * 8] * 3},
)
