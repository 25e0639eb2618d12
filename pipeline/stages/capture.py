"""What trace and export share: the example inputs they capture the model with, and the
torch settings both capture it under (`capture_mode`)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from pipeline.artifacts import files
from pipeline.settings import Layout
from pipeline.spec import ModelSpec


def as_args(spec: ModelSpec, feed: dict[str, np.ndarray]) -> tuple[torch.Tensor, ...]:
    return tuple(torch.from_numpy(np.ascontiguousarray(feed[t.name])) for t in spec.inputs)


def example_args(spec: ModelSpec, batch: int, seed: int, stage: str) -> tuple[torch.Tensor, ...]:
    """The spec's sample inputs at `batch`, checked against its declared inputs, as tensors."""
    feed = spec.check_feed(spec.sample_inputs(batch, np.random.default_rng(seed)), f"sample_inputs({batch}, rng)", stage)
    return as_args(spec, feed)


def check_args(spec: ModelSpec, seed: int, stage: str) -> list[tuple[torch.Tensor, ...]]:
    """Inputs the trace must also reproduce: other batch sizes, edge values, the spec's parity cases."""
    checks = [example_args(spec, b, seed + 1 + i, stage) for i, b in enumerate((1, 7))]
    if spec.edge_inputs is not None:
        checks.append(as_args(spec, spec.check_feed(spec.edge_inputs(), "edge_inputs()", stage)))
    if spec.parity_cases is not None:
        for name, feed in spec.parity_cases(np.random.default_rng(seed)).items():
            checks.append(as_args(spec, spec.check_feed(feed, f"parity_cases()[{name!r}]", stage)))
    return checks


@contextlib.contextmanager
def capture_mode() -> Iterator[None]:
    """Multi-head attention's fused fast path off while tracing, exporting and checking.

    Under no_grad (the trace checker, parity's reference) nn.MultiheadAttention and
    nn.TransformerEncoderLayer take a fused kernel (`aten::_transformer_encoder_layer_fwd`,
    nested tensors for padding masks) that the trace did not record, so the graphs
    differ. The previous setting is restored afterwards.
    """
    previous = torch.backends.mha.get_fastpath_enabled()
    torch.backends.mha.set_fastpath_enabled(False)
    try:
        yield
    finally:
        torch.backends.mha.set_fastpath_enabled(previous)


def module_weight_bytes(model: torch.nn.Module) -> int:
    """The bytes of a module's parameters and buffers, each storage once (tied weights are one)."""
    tensors = {t.untyped_storage().data_ptr(): t.untyped_storage().nbytes() for t in model.state_dict().values()}
    return sum(tensors.values())


def run_once(model: torch.nn.Module, example: tuple[torch.Tensor, ...]) -> None:
    """Run the model once on the example, eagerly: a forward that returns what the spec cannot name
    fails here with its own message, not as a tracer's or an exporter's."""
    with torch.inference_mode(), capture_mode():
        model(*example)


@dataclass(frozen=True)
class StageLog:
    """Where a stage keeps a tool's full text (a tracer's graph dump, an exporter's traceback),
    and the path as messages show it: from the project root, the same on every machine."""

    path: Path
    shown: str

    @classmethod
    def of(cls, layout: Layout, stage: str) -> StageLog:
        path = layout.reports / f"{stage}.log"
        return cls(path, str(path.relative_to(layout.root)))

    def write(self, text: str) -> None:
        files.write_text(self.path, text)

    def append(self, text: str) -> None:
        with self.path.open("a") as log:
            log.write(text)
