"""ResNet-50 at full size: transformers' `ResNetForImageClassification`, random weights.

`pixel_values` (float32 [batch, 3, 224, 224], normalised) in, `logits` (float32
[batch, 1000]) out. The weights are the model's own seeded initialisation, not
ImageNet's: the pipeline proves that every artifact computes what eager computes, which
needs real layers, not trained ones. `make_spec` builds the same class at another
config (the tests' tiny one); README "Real models" shows how to load real weights.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import nn
from transformers import ResNetConfig, ResNetForImageClassification

from pipeline.models.hf_common import ImageFeeds, config_args, num_labels, random_weights, with_labels
from pipeline.spec import ModelSpec, TensorSpec


class ResNetClassifier(nn.Module):
    """pixel_values -> (logits,): a tuple of tensors, which tracing and torch.export take."""

    def __init__(self, config: ResNetConfig):
        super().__init__()
        self.model = ResNetForImageClassification(config)

    def forward(self, pixel_values: torch.Tensor) -> tuple[torch.Tensor]:
        return (self.model(pixel_values=pixel_values, return_dict=True).logits,)


def build(args: Mapping[str, Any]) -> nn.Module:
    return ResNetClassifier(ResNetConfig.from_dict(dict(args)))


def make_spec(config: ResNetConfig, name: str = "resnet50", image_size: int = 224) -> ModelSpec:
    """The spec of `ResNetForImageClassification(config)` on square images of `image_size`."""
    feeds = ImageFeeds(config.num_channels, image_size, image_size)
    return ModelSpec(
        name=name,
        inputs=(TensorSpec("pixel_values", "float32", ("batch", config.num_channels, image_size, image_size)),),
        outputs=(TensorSpec("logits", "float32", ("batch", num_labels(config))),),
        build=build,
        train=random_weights(build, config_args(config)),
        sample_inputs=feeds.sample_inputs,
        # A 224x224 image is too large a JSON body to paste; see README "Real models".
        example_request=None,
    )


# The default ResNetConfig is ResNet-50 (bottleneck blocks, depths 3-4-6-3).
SPEC = make_spec(with_labels(ResNetConfig(), 1000))
