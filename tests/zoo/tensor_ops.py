"""where, gather, topk (values and int64 indices), cumsum, einsum and argmax in one model."""

import numpy as np
import torch
from torch import nn

from pipeline.spec import ModelSpec, TensorSpec, TrainResult

FEATURES = 10
K = 3


class Net(nn.Module):
    def __init__(self, features: int, k: int):
        super().__init__()
        self.k = k
        self.proj = nn.Linear(features, features)
        self.quad = nn.Parameter(torch.randn(features, features) * 0.1)

    def forward(self, x):
        h = self.proj(x)
        h = torch.where(h > 0, h, 0.1 * h)  # leaky
        values, indices = torch.topk(h, self.k, dim=1)
        gathered = torch.gather(x, 1, indices)
        running = torch.cumsum(h, dim=1)
        quadratic = torch.einsum("bi,ij,bj->b", x, self.quad, x)
        best = torch.argmax(h, dim=1)
        return values, indices, gathered, running, quadratic, best


ARGS = {"features": FEATURES, "k": K}


def build(args):
    return Net(args["features"], args["k"])


def train(seed):
    torch.manual_seed(seed)
    return TrainResult(build(ARGS).state_dict(), ARGS, {})


def sample_inputs(batch, rng):
    return {"x": rng.standard_normal((batch, FEATURES)).astype(np.float32)}


SPEC = ModelSpec(
    name="tensor_ops",
    inputs=(TensorSpec("x", "float32", ("batch", FEATURES)),),
    outputs=(
        TensorSpec("topk_values", "float32", ("batch", K)),
        TensorSpec("topk_indices", "int64", ("batch", K)),
        TensorSpec("gathered", "float32", ("batch", K)),
        TensorSpec("cumsum", "float32", ("batch", FEATURES)),
        TensorSpec("quadratic", "float32", ("batch",)),
        TensorSpec("argmax", "int64", ("batch",)),
    ),
    build=build,
    train=train,
    sample_inputs=sample_inputs,
    example_request={"x": [0.3, -1.2, 0.8, 0.05, -0.4, 1.7, -0.9, 0.6, 0.2, -0.1]},
)
