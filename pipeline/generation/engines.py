"""One forward step of the decoder graph on an engine, the cache kept in the engine's own form.

`step(input_ids, attention_mask, position_ids, cache)` returns the last logits [batch, vocab]
as numpy and the new cache; `cache` None is a prefill. The loop never looks inside a cache.

- `OnnxEngine` runs the exported graph with ONNX Runtime's IO binding: the present keys and
  values stay where the session put them (`OrtValue`s, on the GPU for CUDA) and are bound as
  the next step's past, so the cache is never copied through the host between steps; only
  the token ids go in and the logits come out. On CPU it is the same code with device "cpu"
  (what the tests here run). ONNX Runtime allocates each step's present from its arena; a
  graph that writes into one preallocated buffer (onnxruntime-genai's shared past/present
  with GroupQueryAttention) would avoid that, and is not what this graph is.
- `EagerEngine` runs the torch module (`CachedDecoder`) with its cache as torch tensors.

The CUDA path has not run on a GPU in this project yet: it is unverified until it does.
"""

from __future__ import annotations

from typing import Any, Protocol

import numpy as np

from pipeline.runtimes.session import SessionConfig, create_session
from pipeline.spec import Generation

Cache = Any
# What `generate` and the servers can run a generation model on.
ENGINES = ("onnxruntime", "eager")


class Engine(Protocol):
    name: str

    def step(
        self, input_ids: np.ndarray, attention_mask: np.ndarray, position_ids: np.ndarray, cache: Cache | None
    ) -> tuple[np.ndarray, Cache]:
        """The last position's logits [batch, vocab] (float32) and the cache with these tokens added."""
        ...

    def to_host(self, cache: Cache) -> list[np.ndarray]:
        """The cache as numpy arrays, in the graph's order (`Batcher` regroups rows with them)."""
        ...

    def from_host(self, arrays: list[np.ndarray]) -> Cache:
        """`to_host`'s reverse: the arrays in the engine's own form, on its device."""
        ...


class OnnxEngine:
    """The exported decoder graph on ONNX Runtime, its cache bound on the session's device."""

    def __init__(self, path, gen: Generation, config: SessionConfig = SessionConfig(), session: Any = None):
        """The graph at `path` in a session made as `config` says, or the `session` a server already made from it."""
        import onnxruntime as ort

        self.ort = ort
        self.gen = gen
        self.device = config.device
        self.name = f"onnxruntime-{config.device}"
        self.session = session if session is not None else create_session(path, config)
        self.device_id = config.gpu_id
        self.past = gen.cache_names("past_key_values")
        self.present = gen.cache_names("present")

    def empty(self, batch: int) -> list[Any]:
        shape = (batch, self.gen.kv_heads, 0, self.gen.head_size)
        return [self.ort.OrtValue.ortvalue_from_numpy(np.zeros(shape, self.gen.dtype), self.device, self.device_id) for _ in self.past]

    def step(
        self, input_ids: np.ndarray, attention_mask: np.ndarray, position_ids: np.ndarray, cache: Cache | None
    ) -> tuple[np.ndarray, Cache]:
        binding = self.session.io_binding()
        for name, value in (("input_ids", input_ids), ("attention_mask", attention_mask), ("position_ids", position_ids)):
            binding.bind_cpu_input(name, np.ascontiguousarray(value))
        for name, value in zip(self.past, cache if cache is not None else self.empty(input_ids.shape[0])):
            binding.bind_ortvalue_input(name, value)
        binding.bind_output("logits", "cpu")  # the only tensor the host reads
        for name in self.present:
            binding.bind_output(name, self.device, self.device_id)
        self.session.run_with_iobinding(binding)
        outputs = binding.get_outputs()
        return outputs[0].numpy(), outputs[1:]

    def to_host(self, cache: Cache) -> list[np.ndarray]:
        return [value.numpy() for value in cache]

    def from_host(self, arrays: list[np.ndarray]) -> Cache:
        return [self.ort.OrtValue.ortvalue_from_numpy(np.ascontiguousarray(a), self.device, self.device_id) for a in arrays]


class EagerEngine:
    """The torch module, as the checkpoint loads it, with its cache as torch tensors."""

    name = "eager"

    def __init__(self, module: Any, gen: Generation):
        from pipeline.generation.decoder import CachedDecoder  # torch and transformers: only where eager runs

        if not isinstance(module, CachedDecoder):
            raise TypeError(f"eager generation runs a CachedDecoder, not a {type(module).__name__}")
        self.module = module.eval()
        self.gen = gen

    def step(
        self, input_ids: np.ndarray, attention_mask: np.ndarray, position_ids: np.ndarray, cache: Cache | None
    ) -> tuple[np.ndarray, Cache]:
        import torch

        batch = input_ids.shape[0]
        if cache is None:
            shape = (batch, self.gen.kv_heads, 0, self.gen.head_size)
            cache = [torch.zeros(shape, dtype=getattr(torch, self.gen.dtype)) for _ in range(2 * self.gen.layers)]
        with torch.inference_mode():
            logits, *present = self.module(
                torch.from_numpy(input_ids), torch.from_numpy(attention_mask), torch.from_numpy(position_ids), *cache
            )
        return logits.float().numpy(), present

    def to_host(self, cache: Cache) -> list[np.ndarray]:
        return [tensor.numpy() for tensor in cache]

    def from_host(self, arrays: list[np.ndarray]) -> Cache:
        import torch

        return [torch.from_numpy(np.ascontiguousarray(a)) for a in arrays]
