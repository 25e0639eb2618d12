"""ResNet-50 at full size: transformers' `ResNetForImageClassification`, random weights.

`pixel_values` (float32 [batch, 3, 224, 224], normalised) in, `logits` (float32
[batch, 1000]) out. The weights are the model's own seeded initialisation, not
ImageNet's: the pipeline proves that every artifact computes what eager computes, which
needs real layers, not trained ones. `make_spec` builds the same class at another
config (the tests' tiny one); docs/real-models.md shows how to load real weights.
Served, it also takes JPEG and PNG images (`curl -T cat.jpg`), decoded in the worker with
torchvision's ImageNet evaluation transform.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import nn
from transformers import ResNetConfig, ResNetForImageClassification

from pipeline.models.hf_common import AgreementWithEager, ImageFeeds, config_args, num_labels, random_weights, with_labels
from pipeline.spec import ImageInput, ModelSpec, TaskMetric, TensorSpec, Tolerance

# torchvision's ImageNet evaluation transform: the shortest edge to 256 (for 224), a centre crop, ImageNet's mean and std.
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


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
        # int8 (static, calibrated): its logits moved by up to 2.7 % of their scale, and every
        # held-out row kept eager's top class. The bound is 5 % of the scale; at most 2 rows in 100 may flip.
        int8_tolerance=Tolerance(atol=0.01, rtol=0.0, scaled=0.05),
        # fp16 (not yet measured on a GPU): fp16 keeps about three significant digits, so 0.01 plus 2 % of
        # each output's scale, and the same task metric as int8.
        fp16_tolerance=Tolerance(atol=0.01, rtol=0.0, scaled=0.02),
        task_metric=TaskMetric(
            "top-1 agreement with eager fp32",
            AgreementWithEager(build, config_args(config), feeds.sample_inputs, ("pixel_values",), "logits", 0),
            max_drop=0.02,
        ),
        # A 224x224 image is too large a JSON body to paste; send a JPEG (`curl -T cat.jpg`).
        example_request=None,
        image_input=ImageInput(
            "pixel_values",
            image_size,
            image_size,
            mean=IMAGENET_MEAN,
            std=IMAGENET_STD,
            resize_shortest_edge=round(image_size * 256 / 224),
            crop=(image_size, image_size),
        ),
    )


# The default ResNetConfig is ResNet-50 (bottleneck blocks, depths 3-4-6-3).
SPEC = make_spec(with_labels(ResNetConfig(), 1000))
