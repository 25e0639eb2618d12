"""A transformers causal LM as one graph with its key/value cache: what trace, export and parity see.

`CachedDecoder.forward(input_ids, attention_mask, position_ids, *past)` rebuilds transformers'
`DynamicCache` from the flat `past_key_values.{i}.key|value` tensors, runs the model with
`use_cache=True`, and returns the last position's logits [batch, vocab] and the flat
`present.{i}.key|value` tensors (past and new tokens). The same graph does the prefill (a
past of length 0) and every decode step, as Optimum's `text-generation-with-past` decoder
does. Only the last position's logits are computed (`logits_to_keep=1`): a 512-token
prompt of a 150k vocabulary would otherwise spend most of its prefill on logits no one reads.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn
from transformers import DynamicCache, PreTrainedModel

from pipeline.generation import text
from pipeline.generation.loop import position_ids
from pipeline.spec import Feed, Generation, TensorSpec

# The example's sizes: every dynamic axis at least 2 and unlike the others (torch.export
# would fix or merge them otherwise), with the export's batch of 4.
SAMPLE_SEQ = 5
SAMPLE_PAST = 7


class CachedDecoder(nn.Module):
    """(input_ids, attention_mask, position_ids, *past) -> (logits of the last position, *present)."""

    def __init__(self, model: PreTrainedModel, layers: int):
        super().__init__()
        self.model = model
        self.layers = layers
        params = inspect.signature(model.forward).parameters
        self.keep = {"logits_to_keep": 1} if "logits_to_keep" in params else {}
        # transformers 5.x names the cache argument `cache`; earlier releases `past_key_values`.
        self.cache_arg = "cache" if "cache" in params else "past_key_values"

    def forward(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, position_ids: torch.Tensor, *past: torch.Tensor
    ) -> tuple[torch.Tensor, ...]:
        cache = DynamicCache(config=self.model.config)
        for i in range(self.layers):
            cache.update(past[2 * i], past[2 * i + 1], i)
        out = self.model(
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=position_ids,
            use_cache=True,
            return_dict=True,
            **{self.cache_arg: cache},
            **self.keep,
        )
        present = [t for layer in out.past_key_values.layers[: self.layers] for t in (layer.keys, layer.values)]
        return (out.logits[:, -1, :], *present)


def tensors(gen: Generation) -> tuple[tuple[TensorSpec, ...], tuple[TensorSpec, ...]]:
    """The graph's inputs and outputs, named as Optimum and onnxruntime-genai name them."""
    cache = (gen.kv_heads, gen.head_size)
    inputs = (
        TensorSpec("input_ids", "int64", ("batch", "seq"), low=0, high=gen.vocab_size - 1),
        TensorSpec("attention_mask", "int64", ("batch", "total"), low=0, high=1),
        TensorSpec("position_ids", "int64", ("batch", "seq"), low=0, high=gen.max_length - 1),
        *(TensorSpec(name, gen.dtype, ("batch", cache[0], "past", cache[1])) for name in gen.cache_names("past_key_values")),
    )
    outputs = (
        TensorSpec("logits", "float32", ("batch", gen.vocab_size)),
        *(TensorSpec(name, gen.dtype, ("batch", cache[0], "total", cache[1])) for name in gen.cache_names("present")),
    )
    return inputs, outputs


def spec_fields(gen: Generation, example_text: str) -> dict:
    """A generation model's ModelSpec fields: its graph's inputs and outputs, feeds, lengths and layout."""
    inputs, outputs = tensors(gen)
    feeds = DecoderFeeds(gen)
    return {
        "inputs": inputs,
        "outputs": outputs,
        "sample_inputs": feeds.sample_inputs,
        "edge_inputs": feeds.edge_inputs,
        "parity_cases": feeds.parity_cases,
        "max_lengths": {"seq": gen.max_length, "total": gen.max_length, "past": gen.max_length},
        "example_request": {"text": example_text, "max_new_tokens": 16},
        # A request is prompts, not tensors: the body cap is theirs, not one row of the cache's.
        "max_request_bytes": max(1 << 20, gen.max_batch * gen.max_length * text.CHARS_PER_TOKEN * text.BYTES_PER_CHAR),
        "generation": gen,
    }


@dataclass(frozen=True)
class DecoderFeeds:
    """The spec's feeds: token ids and a past of random keys and values, no padding.

    Random past values check that each engine computes the graph as eager does; the
    generation check (`pipeline.generation.verify`) runs real prefills and decode steps.
    """

    gen: Generation

    def feed(self, batch: int, seq: int, past: int, rng: np.random.Generator) -> Feed:
        gen = self.gen
        mask = np.ones((batch, past + seq), dtype=np.int64)
        out: Feed = {
            "input_ids": rng.integers(0, gen.vocab_size, size=(batch, seq)).astype(np.int64),
            "attention_mask": mask,
            "position_ids": position_ids(mask, seq),
        }
        for name in gen.cache_names("past_key_values"):
            out[name] = rng.standard_normal((batch, gen.kv_heads, past, gen.head_size)).astype(gen.dtype)
        return out

    def sample_inputs(self, batch: int, rng: np.random.Generator) -> Feed:
        return self.feed(batch, SAMPLE_SEQ, SAMPLE_PAST, rng)

    def edge_inputs(self) -> Feed:
        """A prefill: no past, three prompts of the largest and smallest ids."""
        rng = np.random.default_rng(0)
        feed = self.feed(3, 6, 0, rng)
        feed["input_ids"][0] = 0
        feed["input_ids"][1] = self.gen.vocab_size - 1
        return feed

    def parity_cases(self, rng: np.random.Generator) -> dict[str, Feed]:
        return {
            "decode step seq=1 past=9 b=3": self.feed(3, 1, 9, rng),
            "prefill seq=11 past=0 b=2": self.feed(2, 11, 0, rng),
        }
