"""ViT-B/16 at 224 at full size: transformers' `ViTForImageClassification`, random weights.

`pixel_values` (float32 [batch, 3, 224, 224], normalised) in, `logits` (float32
[batch, 1000]) out. transformers initialises the classifier head with random weights
(torchvision's `vit_b_16(weights=None)` zeroes it, and every logit is then 0, which no
comparison can fail). `make_spec` builds the same class at another config.
Served, it also takes JPEG and PNG images (`curl -T cat.jpg`), decoded in the worker with
ViTImageProcessor's resize and normalisation.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import nn
from transformers import ViTConfig, ViTForImageClassification

from pipeline.models.hf_common import AgreementWithEager, ImageFeeds, config_args, image_hw, num_labels, random_weights, with_labels
from pipeline.spec import ImageInput, ModelSpec, TaskMetric, TensorSpec, Tolerance


class ViTClassifier(nn.Module):
    """pixel_values -> (logits,): a tuple of tensors, which tracing and torch.export take."""

    def __init__(self, config: ViTConfig):
        super().__init__()
        self.model = ViTForImageClassification(config)

    def forward(self, pixel_values: torch.Tensor) -> tuple[torch.Tensor]:
        return (self.model(pixel_values=pixel_values).logits,)


def build(args: Mapping[str, Any]) -> nn.Module:
    return ViTClassifier(ViTConfig.from_dict(dict(args)))


def make_spec(config: ViTConfig, name: str = "vit_b16") -> ModelSpec:
    """The spec of `ViTForImageClassification(config)`: images of the config's image_size."""
    (height, width), channels = image_hw(config.image_size), config.num_channels
    feeds = ImageFeeds(channels, height, width)
    return ModelSpec(
        name=name,
        inputs=(TensorSpec("pixel_values", "float32", ("batch", channels, height, width)),),
        outputs=(TensorSpec("logits", "float32", ("batch", num_labels(config))),),
        build=build,
        train=random_weights(build, config_args(config)),
        sample_inputs=feeds.sample_inputs,
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
        # ViTImageProcessor's (google/vit-base-patch16-224): resized to the model's size, normalised to [-1, 1].
        image_input=ImageInput("pixel_values", height, width, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5), resize=(height, width)),
    )


# The default ViTConfig is ViT-B/16 at 224: 12 layers, hidden size 768, patches of 16.
SPEC = make_spec(with_labels(ViTConfig(), 1000))
