"""Three inputs, one of them bool: x float32, ids int64 (embedding), flag bool picking a branch via torch.where."""

import numpy as np
import torch
from torch import nn

from pipeline.spec import ModelSpec, TensorSpec, TrainResult

FEATURES = 4
IDS = 5


class Net(nn.Module):
    def __init__(self, ids: int, hidden: int):
        super().__init__()
        self.embed = nn.Embedding(ids, FEATURES)
        self.branch_a = nn.Sequential(nn.Linear(FEATURES, hidden), nn.ReLU(), nn.Linear(hidden, 1))
        self.branch_b = nn.Sequential(nn.Linear(FEATURES, hidden), nn.Tanh(), nn.Linear(hidden, 1))

    def forward(self, x, ids, flag):
        e = self.embed(ids)
        a = self.branch_a(x + e)
        b = self.branch_b(x * e)
        return torch.where(flag.unsqueeze(1), a, b)


ARGS = {"ids": IDS, "hidden": 16}


def build(args):
    return Net(args["ids"], args["hidden"])


def train(seed):
    torch.manual_seed(seed)
    return TrainResult(build(ARGS).state_dict(), ARGS, {})


def sample_inputs(batch, rng):
    flag = rng.integers(0, 2, size=batch).astype(np.bool_)
    if batch > 1:  # both branches in every multi-row batch
        flag[0], flag[1] = True, False
    return {
        "x": rng.uniform(-1, 1, size=(batch, FEATURES)).astype(np.float32),
        "ids": rng.integers(0, IDS, size=batch).astype(np.int64),
        "flag": flag,
    }


def edge_inputs():
    return {
        "x": np.array([[0.0] * FEATURES, [1.0] * FEATURES, [-1.0] * FEATURES, [0.5] * FEATURES], np.float32),
        "ids": np.array([0, IDS - 1, 0, IDS - 1], np.int64),
        "flag": np.array([True, True, False, False]),
    }


SPEC = ModelSpec(
    name="three_inputs",
    inputs=(
        TensorSpec("x", "float32", ("batch", FEATURES)),
        TensorSpec("ids", "int64", ("batch",), low=0, high=IDS - 1),
        TensorSpec("flag", "bool", ("batch",)),
    ),
    outputs=(TensorSpec("y", "float32", ("batch", 1)),),
    build=build,
    train=train,
    sample_inputs=sample_inputs,
    edge_inputs=edge_inputs,
    example_request={"x": [0.1, -0.4, 0.7, 0.2], "ids": 3, "flag": True},
)
