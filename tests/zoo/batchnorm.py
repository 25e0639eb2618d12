"""Conv2d + BatchNorm2d + ReLU, then a Linear + BatchNorm1d head; running stats made non-trivial."""

import numpy as np
import torch
from torch import nn

from pipeline.spec import ModelSpec, TensorSpec, TrainResult


class Net(nn.Module):
    def __init__(self, channels: int, hidden: int, classes: int):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, channels, kernel_size=3, padding=1),
            nn.BatchNorm2d(channels),
            nn.ReLU(),
            nn.AvgPool2d(4),  # 8x8 -> 2x2
            nn.Flatten(),
        )
        self.head = nn.Sequential(
            nn.Linear(channels * 4, hidden),
            nn.BatchNorm1d(hidden),
            nn.ReLU(),
            nn.Linear(hidden, classes),
        )

    def forward(self, x):
        return self.head(self.features(x))


ARGS = {"channels": 8, "hidden": 16, "classes": 4}


def build(args):
    return Net(args["channels"], args["hidden"], args["classes"])


def train(seed):
    torch.manual_seed(seed)
    model = build(ARGS)
    # Move the running statistics away from (0, 1) so eval-mode normalisation is not the identity.
    model.train()
    with torch.no_grad():
        for _ in range(20):
            model(torch.randn(32, 3, 8, 8) * 3.0 + 1.5)
    model.eval()
    return TrainResult(model.state_dict(), ARGS, {})


def sample_inputs(batch, rng):
    return {"image": rng.standard_normal((batch, 3, 8, 8)).astype(np.float32)}


SPEC = ModelSpec(
    name="batchnorm",
    inputs=(TensorSpec("image", "float32", ("batch", 3, 8, 8)),),
    outputs=(TensorSpec("logits", "float32", ("batch", 4)),),
    build=build,
    train=train,
    sample_inputs=sample_inputs,
    example_request={"image": [[[0.5] * 8] * 8] * 3},
)
