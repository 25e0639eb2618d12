"""What trace and export share: the example inputs they capture the model with."""

from __future__ import annotations

import numpy as np
import torch

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
