"""nn.EmbeddingBag(mode="mean") over fixed-size bags given as a 2-D int64 input."""

import numpy as np
import torch
from torch import nn

from pipeline.spec import ModelSpec, TensorSpec, TrainResult

VOCAB = 30
BAG = 6
DIM = 16


class Net(nn.Module):
    def __init__(self, vocab: int, dim: int):
        super().__init__()
        self.bag = nn.EmbeddingBag(vocab, dim, mode="mean")

    def forward(self, ids):
        return self.bag(ids)


ARGS = {"vocab": VOCAB, "dim": DIM}


def build(args):
    return Net(args["vocab"], args["dim"])


def train(seed):
    torch.manual_seed(seed)
    return TrainResult(build(ARGS).state_dict(), ARGS, {})


def sample_inputs(batch, rng):
    return {"ids": rng.integers(0, VOCAB, size=(batch, BAG)).astype(np.int64)}


def edge_inputs():
    return {"ids": np.array([[0] * BAG, [VOCAB - 1] * BAG, [0, VOCAB - 1] * (BAG // 2)], dtype=np.int64)}


SPEC = ModelSpec(
    name="embedding_bag",
    inputs=(TensorSpec("ids", "int64", ("batch", BAG), low=0, high=VOCAB - 1),),
    outputs=(TensorSpec("pooled", "float32", ("batch", DIM)),),
    build=build,
    train=train,
    sample_inputs=sample_inputs,
    edge_inputs=edge_inputs,
    example_request={"ids": [1, 2, 3, 5, 8, 13]},
)
