"""BERT-base at full size: transformers' `BertModel`, random weights, default attention.

`input_ids` and a 2-D `attention_mask` (int64 [batch, seq], 1 = a real token) in;
`last_hidden_state` (float32 [batch, seq, 768]) and `pooler_output` (float32
[batch, 768]) out. `seq` is a dynamic axis up to the model's 512 positions; parity runs
a right-padded batch and sequences of length 1. `make_spec` builds the same class at
another config (the tests' tiny one).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import nn
from transformers import BertConfig, BertModel

from pipeline.models.hf_common import AgreementWithEager, TokenFeeds, config_args, random_weights
from pipeline.spec import ModelSpec, TaskMetric, TensorSpec, Tolerance


class BertEncoder(nn.Module):
    """(input_ids, attention_mask) -> (last_hidden_state, pooler_output), as a tuple of tensors."""

    def __init__(self, config: BertConfig):
        super().__init__()
        self.model = BertModel(config)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        out = self.model(input_ids=input_ids, attention_mask=attention_mask)
        return out.last_hidden_state, out.pooler_output


def build(args: Mapping[str, Any]) -> nn.Module:
    return BertEncoder(BertConfig.from_dict(dict(args)))


def make_spec(config: BertConfig, name: str = "bert_base") -> ModelSpec:
    """The spec of `BertModel(config)`."""
    feeds = TokenFeeds(config.vocab_size, config.max_position_embeddings)
    hidden = config.hidden_size
    return ModelSpec(
        name=name,
        inputs=(
            TensorSpec("input_ids", "int64", ("batch", "seq"), low=0, high=config.vocab_size - 1),
            TensorSpec("attention_mask", "int64", ("batch", "seq"), low=0, high=1),
        ),
        outputs=(
            TensorSpec("last_hidden_state", "float32", ("batch", "seq", hidden)),
            TensorSpec("pooler_output", "float32", ("batch", hidden)),
        ),
        build=build,
        train=random_weights(build, config_args(config)),
        sample_inputs=feeds.sample_inputs,
        edge_inputs=feeds.edge_inputs,
        parity_cases=feeds.parity_cases,
        max_lengths={"seq": config.max_position_embeddings},
        # int8 (dynamic: int8 weights, activations quantized per call) moved the hidden states by up
        # to 2.7 % of their scale, and the pooled output (tanh, within ±1) by up to 0.07, at a mean
        # cosine similarity of 0.9996 to eager's. The bound: 0.05 plus 5 % of each output's scale.
        int8_tolerance=Tolerance(atol=0.05, rtol=0.0, scaled=0.05),
        # fp16 (not yet measured on a GPU): fp16 keeps about three significant digits, so 0.01 plus 2 % of
        # each output's scale, and the same task metric as int8.
        fp16_tolerance=Tolerance(atol=0.01, rtol=0.0, scaled=0.02),
        task_metric=TaskMetric(
            "cosine similarity to eager fp32",
            AgreementWithEager(
                build, config_args(config), feeds.sample_inputs, ("input_ids", "attention_mask"), "last_hidden_state", 0, "cosine"
            ),
            max_drop=0.005,
        ),
        # "[CLS] hello world [SEP]" in BERT's uncased vocabulary.
        example_request=feeds.example_request([101, 7592, 2088, 102]),
    )


SPEC = make_spec(BertConfig())
