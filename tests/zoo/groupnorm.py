"""Conv2d + GroupNorm(4 groups) + SiLU over a fixed 8x8 image."""

import numpy as np
import torch
from torch import nn

from pipeline.spec import ModelSpec, TensorSpec, TrainResult


class Net(nn.Module):
    def __init__(self, channels: int, groups: int):
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(4, channels, kernel_size=3, padding=1),
            nn.GroupNorm(groups, channels),
            nn.SiLU(),
            nn.Conv2d(channels, channels, kernel_size=3, padding=1),
            nn.GroupNorm(groups, channels),
        )

    def forward(self, x):
        return self.body(x)


ARGS = {"channels": 8, "groups": 4}


def build(args):
    return Net(args["channels"], args["groups"])


def train(seed):
    torch.manual_seed(seed)
    model = build(ARGS)
    with torch.no_grad():  # non-trivial affine parameters
        for norm in (model.body[1], model.body[4]):
            norm.weight.normal_(1.0, 0.3)
            norm.bias.normal_(0.0, 0.3)
    return TrainResult(model.state_dict(), ARGS, {})


def sample_inputs(batch, rng):
    return {"image": rng.standard_normal((batch, 4, 8, 8)).astype(np.float32)}


SPEC = ModelSpec(
    name="groupnorm",
    inputs=(TensorSpec("image", "float32", ("batch", 4, 8, 8)),),
    outputs=(TensorSpec("y", "float32", ("batch", 8, 8, 8)),),
    build=build,
    train=train,
    sample_inputs=sample_inputs,
    example_request={"image": [[[0.1 * j for j in range(8)]] * 8] * 4},
)
