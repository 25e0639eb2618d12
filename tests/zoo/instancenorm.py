"""Conv2d + InstanceNorm2d(affine=True, track_running_stats=False) + ReLU over a fixed 8x8 image."""

import numpy as np
import torch
from torch import nn

from pipeline.spec import ModelSpec, TensorSpec, TrainResult


class Net(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(3, channels, kernel_size=3, padding=1)
        self.norm = nn.InstanceNorm2d(channels, affine=True, track_running_stats=False)
        self.out = nn.Conv2d(channels, 4, kernel_size=1)

    def forward(self, x):
        return self.out(torch.relu(self.norm(self.conv(x))))


ARGS = {"channels": 8}


def build(args):
    return Net(args["channels"])


def train(seed):
    torch.manual_seed(seed)
    model = build(ARGS)
    with torch.no_grad():  # non-trivial affine parameters
        model.norm.weight.normal_(1.0, 0.3)
        model.norm.bias.normal_(0.0, 0.3)
    return TrainResult(model.state_dict(), ARGS, {})


def sample_inputs(batch, rng):
    return {"image": rng.standard_normal((batch, 3, 8, 8)).astype(np.float32)}


SPEC = ModelSpec(
    name="instancenorm",
    inputs=(TensorSpec("image", "float32", ("batch", 3, 8, 8)),),
    outputs=(TensorSpec("y", "float32", ("batch", 4, 8, 8)),),
    build=build,
    train=train,
    sample_inputs=sample_inputs,
    example_request={"image": [[[0.1 * j for j in range(8)]] * 8] * 3},
)
