"""nn.Embedding + nn.TransformerEncoder with a key-padding mask input, mean-pooled over non-pad positions."""

import numpy as np
import torch
from torch import nn

from pipeline.spec import ModelSpec, TensorSpec, TrainResult

VOCAB = 20
DIM = 16
SAMPLE_LENGTH = 12  # >= 2 and unlike the export batch of 4


class Net(nn.Module):
    def __init__(self, vocab: int, dim: int, heads: int, layers: int):
        super().__init__()
        self.embed = nn.Embedding(vocab, dim)
        layer = nn.TransformerEncoderLayer(dim, heads, dim_feedforward=2 * dim, batch_first=True)
        self.encoder = nn.TransformerEncoder(layer, num_layers=layers)

    def forward(self, tokens, padding_mask):
        h = self.encoder(self.embed(tokens), src_key_padding_mask=padding_mask)
        keep = (~padding_mask).unsqueeze(-1).to(h.dtype)
        return (h * keep).sum(dim=1) / keep.sum(dim=1)


ARGS = {"vocab": VOCAB, "dim": DIM, "heads": 2, "layers": 2}


def build(args):
    return Net(args["vocab"], args["dim"], args["heads"], args["layers"])


def train(seed):
    torch.manual_seed(seed)
    model = build(ARGS)
    return TrainResult(model.state_dict(), ARGS, {})


def feed(batch, length, rng):
    tokens = rng.integers(0, VOCAB, size=(batch, length)).astype(np.int64)
    # Each row keeps its first `keep` positions (at least one), the rest is padding.
    keep = rng.integers(1, length + 1, size=batch)
    if batch > 1:
        keep[0] = length  # one row without padding
    mask = np.arange(length)[None, :] >= keep[:, None]
    return {"tokens": tokens, "padding_mask": mask.astype(np.bool_)}


def sample_inputs(batch, rng):
    return feed(batch, SAMPLE_LENGTH, rng)


def parity_cases(rng):
    return {f"seq={n} b={b}": feed(b, n, rng) for b, n in [(1, 1), (5, 1), (3, 2), (7, 33)]}


SPEC = ModelSpec(
    name="transformer_encoder",
    inputs=(
        TensorSpec("tokens", "int64", ("batch", "seq"), low=0, high=VOCAB - 1),
        TensorSpec("padding_mask", "bool", ("batch", "seq")),
    ),
    outputs=(TensorSpec("pooled", "float32", ("batch", DIM)),),
    build=build,
    train=train,
    sample_inputs=sample_inputs,
    parity_cases=parity_cases,
    example_request={"tokens": [3, 1, 4, 1, 5, 9], "padding_mask": [False, False, False, False, True, True]},
)
