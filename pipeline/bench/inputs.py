"""What the in-process benchmark feeds: the spec's seeded `sample_inputs` to every engine, with
`--length seq=512` each input's `seq` axis stretched to 512 first (`at_lengths`).

What the served benchmark sends (a model's real input where it takes one, and the same tensor
in binary) is `pipeline.serving.common.samples`, the request `serve --on ray` checks with too.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from pipeline.errors import PipelineError
from pipeline.serving.common.contract import Contract, declare


def at_lengths(spec, feed: Mapping[str, np.ndarray], lengths: Mapping[str, int]) -> dict[str, np.ndarray]:
    """`feed` with every input axis named in `lengths` stretched (or cut) to that length, by repeating
    its own values along the axis: token ids stay ids of the vocabulary, a mask of ones stays ones.
    `check_lengths` has refused an axis the inputs lack, and a length past the model's."""
    out = {}
    for t in spec.inputs:
        value = np.asarray(feed[t.name])
        for axis, name in t.dynamic_axes().items():
            if name in lengths:
                value = np.take(value, np.arange(lengths[name]) % value.shape[axis], axis=axis)
        out[t.name] = np.ascontiguousarray(value)
    return out


def check_lengths(spec, lengths: Mapping[str, int], stage: str) -> None:
    """Refuse a length for an axis no input has (or the batch axis), or one over the model's maximum."""
    axes = {name for t in spec.inputs for axis, name in t.dynamic_axes().items() if axis > 0}
    limits = Contract(declare(spec)).max_lengths
    for name, length in lengths.items():
        if name not in axes:
            raise PipelineError(
                stage,
                f"--length {name}={length}: {spec.name}'s inputs have no axis {name!r} besides the batch",
                f"name one of {sorted(axes)}" if axes else f"{spec.name} has no dynamic axis but the batch; drop --length",
            )
        if not 1 <= length <= limits.get(name, length):
            raise PipelineError(
                stage,
                f"--length {name}={length} is outside 1..{limits.get(name)}, what {spec.name} takes on that axis",
                f"use at most {limits.get(name)} (the model's max_lengths)",
            )
