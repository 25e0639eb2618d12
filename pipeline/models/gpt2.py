"""GPT-2 small at full size: transformers' `GPT2LMHeadModel`, random weights, default attention.

`input_ids` and a 2-D `attention_mask` (int64 [batch, seq], 1 = a real token) in;
`logits` (float32 [batch, seq, 50257]) out, without the key/value cache. `seq` is a
dynamic axis up to the model's 1024 positions. `lm_head.weight` is tied to
`transformer.wte.weight`, so the checkpoint holds a shared tensor. `make_spec` builds
the same class at another config (the tests' tiny one).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import nn
from transformers import GPT2Config, GPT2LMHeadModel

from pipeline.models.hf_common import AgreementWithEager, TokenFeeds, config_args, random_weights
from pipeline.spec import ModelSpec, TaskMetric, TensorSpec, Tolerance


class GPT2Logits(nn.Module):
    """(input_ids, attention_mask) -> (logits,): no cache, a tuple of tensors."""

    def __init__(self, config: GPT2Config):
        super().__init__()
        self.model = GPT2LMHeadModel(config)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> tuple[torch.Tensor]:
        return (self.model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False).logits,)


def build(args: Mapping[str, Any]) -> nn.Module:
    return GPT2Logits(GPT2Config.from_dict(dict(args)))


def make_spec(config: GPT2Config, name: str = "gpt2") -> ModelSpec:
    """The spec of `GPT2LMHeadModel(config)`."""
    feeds = TokenFeeds(config.vocab_size, config.n_positions)
    return ModelSpec(
        name=name,
        inputs=(
            TensorSpec("input_ids", "int64", ("batch", "seq"), low=0, high=config.vocab_size - 1),
            TensorSpec("attention_mask", "int64", ("batch", "seq"), low=0, high=1),
        ),
        outputs=(TensorSpec("logits", "float32", ("batch", "seq", config.vocab_size)),),
        build=build,
        train=random_weights(build, config_args(config)),
        sample_inputs=feeds.sample_inputs,
        edge_inputs=feeds.edge_inputs,
        parity_cases=feeds.parity_cases,
        max_lengths={"seq": config.n_positions},
        # fp16 (not yet measured on a GPU): fp16 keeps about three significant digits, so 0.01 plus 2 % of
        # each output's scale, and the same task metric as int8.
        fp16_tolerance=Tolerance(atol=0.01, rtol=0.0, scaled=0.02),
        task_metric=TaskMetric(
            "next-token top-1 agreement with eager fp32",
            AgreementWithEager(build, config_args(config), feeds.sample_inputs, ("input_ids", "attention_mask"), "logits", 0),
            max_drop=0.02,
        ),
        # "Hello" in GPT-2's vocabulary. One token: each token's answer is vocab_size floats,
        # about 1 MB of JSON at 50257.
        example_request=feeds.example_request([15496]),
    )


SPEC = make_spec(GPT2Config())
