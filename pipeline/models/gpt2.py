"""GPT-2 small at full size: transformers' `GPT2LMHeadModel`, random weights, default attention,
deployed to generate text with its key/value cache (`pipeline.generation`).

SPEC is a text-generation model: its graph takes `input_ids`, `attention_mask`,
`position_ids` and the past keys and values of its 12 layers, and returns the last
position's logits and the present keys and values. Prompts are tokenized with GPT-2's
byte-level alphabet without its merges (ids 0–255 as GPT-2's vocabulary has them, and
`<|endoftext|>` at 50256): the merges are not on this machine, and the weights are random.
`lm_head.weight` is tied to `transformer.wte.weight`, so the checkpoint holds a shared tensor.

`make_spec` is the same class as one logits pass without the cache (`input_ids` and a 2-D
`attention_mask` in, `logits` [batch, seq, vocab] out), at any config (the tests' tiny one);
`make_generation_spec` the generation model at any config.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import nn
from transformers import GPT2Config, GPT2LMHeadModel

from pipeline.generation import decoder, text
from pipeline.generation.decoder import CachedDecoder
from pipeline.models.hf_common import AgreementWithEager, TokenFeeds, config_args, random_weights
from pipeline.spec import Generation, ModelSpec, TaskMetric, TensorSpec, Tolerance

EOS = "<|endoftext|>"


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


def build_decoder(args: Mapping[str, Any]) -> CachedDecoder:
    config = GPT2Config.from_dict(dict(args))
    return CachedDecoder(GPT2LMHeadModel(config), config.n_layer)


def make_generation_spec(config: GPT2Config, name: str = "gpt2") -> ModelSpec:
    """`GPT2LMHeadModel(config)` deployed to generate, with its key/value cache and GPT-2's byte alphabet."""
    eos_id = config.eos_token_id if isinstance(config.eos_token_id, int) else config.vocab_size - 1
    tokenizer = text.saved(text.byte_level(config.vocab_size, EOS, eos_id), name)
    gen = Generation(
        tokenizer=tokenizer,
        layers=config.n_layer,
        kv_heads=config.n_head,
        head_size=config.n_embd // config.n_head,
        vocab_size=config.vocab_size,
        eos_ids=(eos_id,),
        pad_id=eos_id,  # GPT-2 has no pad token; under a mask of 0 any id does
        bos_id=eos_id,  # GPT-2 starts a text after <|endoftext|>
        max_length=config.n_positions,
    )
    return ModelSpec(
        name=name,
        build=build_decoder,
        train=random_weights(build_decoder, config_args(config)),
        **decoder.spec_fields(gen, "Hello world!"),
    )


SPEC = make_generation_spec(GPT2Config())
