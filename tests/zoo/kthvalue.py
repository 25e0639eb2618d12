"""A robust statistic per row: torch.kthvalue (the 3rd smallest of 8 features) and a linear head."""

import numpy as np
import torch
from torch import nn

from pipeline.spec import ModelSpec, TensorSpec, TrainResult

# Neither ONNX exporter translates aten::kthvalue (torch 2.13; https://github.com/onnx/onnx/issues/3586
# sent it back to PyTorch). The model pattern to change: torch.topk(x, k, largest=False).values[..., -1]
# computes the same and exports.
LIMITATION = "no ONNX translation for aten::kthvalue ([onnx/onnx#3586](https://github.com/onnx/onnx/issues/3586)); use torch.topk(x, k, largest=False)"


class KthValue(nn.Module):
    def __init__(self):
        super().__init__()
        self.head = nn.Linear(1, 2)

    def forward(self, x):
        kth = torch.kthvalue(x, 3, dim=1, keepdim=True).values
        return self.head(kth)


def build(args):
    return KthValue()


def train(seed):
    torch.manual_seed(seed)
    return TrainResult(KthValue().state_dict(), {}, {})


def sample_inputs(batch, rng):
    return {"x": rng.standard_normal((batch, 8)).astype(np.float32)}


SPEC = ModelSpec(
    name="kthvalue",
    # The fallback exporter is allowed, so the refusal shows that neither exporter can.
    exporter_fallback=True,
    inputs=(TensorSpec("x", "float32", ("batch", 8)),),
    outputs=(TensorSpec("y", "float32", ("batch", 2)),),
    build=build,
    train=train,
    sample_inputs=sample_inputs,
    example_request={"x": [0.5, -1.0, 2.0, 0.1, 0.0, 1.5, -0.3, 0.7]},
)
