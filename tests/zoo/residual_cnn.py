"""A small ResNet: stem, 2 residual blocks with BatchNorm (one downsampling), global average pool, linear head."""

import numpy as np
import torch
from torch import nn

from pipeline.spec import ModelSpec, TensorSpec, TrainResult


class Block(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.skip = nn.Identity()
        if stride != 1 or cin != cout:
            self.skip = nn.Sequential(nn.Conv2d(cin, cout, 1, stride=stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x):
        h = torch.relu(self.bn1(self.conv1(x)))
        return torch.relu(self.bn2(self.conv2(h)) + self.skip(x))


class Net(nn.Module):
    def __init__(self, width: int, classes: int):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, width, 3, padding=1, bias=False), nn.BatchNorm2d(width), nn.ReLU())
        self.blocks = nn.Sequential(Block(width, width, 1), Block(width, 2 * width, 2))
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.head = nn.Linear(2 * width, classes)

    def forward(self, x):
        return self.head(self.pool(self.blocks(self.stem(x))).flatten(1))


ARGS = {"width": 8, "classes": 10}


def build(args):
    return Net(args["width"], args["classes"])


def train(seed):
    torch.manual_seed(seed)
    model = build(ARGS)
    # Move the running statistics away from (0, 1) so eval-mode normalisation is not the identity.
    model.train()
    with torch.no_grad():
        for _ in range(20):
            model(torch.randn(32, 3, 16, 16) * 2.0 + 0.5)
    model.eval()
    return TrainResult(model.state_dict(), ARGS, {})


def sample_inputs(batch, rng):
    return {"image": rng.standard_normal((batch, 3, 16, 16)).astype(np.float32)}


SPEC = ModelSpec(
    name="residual_cnn",
    inputs=(TensorSpec("image", "float32", ("batch", 3, 16, 16)),),
    outputs=(TensorSpec("logits", "float32", ("batch", 10)),),
    build=build,
    train=train,
    sample_inputs=sample_inputs,
    example_request={"image": [[[0.1 * j for j in range(16)]] * 16] * 3},
)
