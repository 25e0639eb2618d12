"""What the transformers built-ins share: config as model_args, seeded random weights, feeds.

The real-model built-ins (resnet50, vit_b16, bert_base, gpt2) build transformers' own
classes from a config, with random weights: no model hub, no download. The checkpoint's
model_args are the config itself (JSON), so `build` rebuilds whatever size trained,
full size or a test's tiny one. This module defines no SPEC; it is not a model.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import torch
from torch import nn
from transformers import PreTrainedConfig

from pipeline.errors import SpecError
from pipeline.spec import Feed, TrainResult

Config = TypeVar("Config", bound=PreTrainedConfig)

# The sequence length of sample_inputs (trace and export examples): >= 2 and unlike the
# export's batch of 4, or torch.export would specialise or merge the two axes.
SAMPLE_LENGTH = 16


def with_labels(config: Config, labels: int) -> Config:
    """The config with a classifier of `labels` outputs (transformers' default is 2)."""
    config.num_labels = labels
    return config


def num_labels(config: PreTrainedConfig) -> int:
    """The classifier's output size, which transformers types as optional."""
    if not config.num_labels:
        raise SpecError("model", f"{type(config).__name__} has no num_labels", "give the config a classifier: with_labels(config, 1000)")
    return config.num_labels


def image_hw(size: int | list[int] | tuple[int, int]) -> tuple[int, int]:
    """(height, width) of a config's image_size, which may be one int or a pair."""
    if isinstance(size, int):
        return size, size
    height, width = size
    return int(height), int(width)


def inside(folder: Path, name: str) -> Path:
    """`folder / name`, refused where it leads out of the folder (a link, '..', an absolute name): checked before it is opened."""
    path = folder / name
    try:
        target = path.resolve()
    except (OSError, RuntimeError) as exc:  # a loop of links
        raise SpecError(
            "model", f"{path} cannot be resolved: {exc}", f"replace the link with the file itself: rm {path}, then copy it in"
        ) from None
    if not target.is_relative_to(folder.resolve()):
        raise SpecError(
            "model",
            f"{path} leads outside the checkpoint folder, to {target}: refusing to read it (only the folder's own files are loaded)",
            f"copy the file into the folder instead of linking to it, if you trust it: cp --remove-destination {target} {path}",
        )
    return path


def check_links(folder: Path) -> None:
    """Refuse a checkpoint folder holding a link out of it, whatever its name: transformers reads files the loader does not name."""
    for entry in sorted(folder.iterdir()):
        inside(folder, entry.name)


def checkpoint_file(folder: Path, name: str, why: str, fix: str) -> Path:
    """`folder / name`, or a SpecError saying what the model needs it for and how to save it."""
    path = inside(folder, name)
    if not path.is_file():
        raise SpecError("model", f"{folder} has no {name}: {why}", fix)
    return path


def config_args(config: PreTrainedConfig) -> dict[str, Any]:
    """The config as JSON model_args. The label tables (1000 entries for ImageNet) are left
    out: `num_labels` rebuilds them, and the manifest stays readable."""
    args = config.to_dict()
    args.pop("id2label", None)
    args.pop("label2id", None)
    args["num_labels"] = config.num_labels
    return args


def random_weights(build: Callable[[Mapping[str, Any]], nn.Module], args: Mapping[str, Any]) -> Callable[[int], TrainResult]:
    """A `train(seed)` that trains nothing: the model's own initialisation, seeded.

    To ship weights you have, load them here instead (see docs/real-models.md, "Your own weights").
    """

    def train(seed: int) -> TrainResult:
        torch.manual_seed(seed)
        model = build(args)
        return TrainResult(state_dict=model.state_dict(), model_args=dict(args), metrics={})

    return train


@dataclass(frozen=True)
class ImageFeeds:
    """`pixel_values` [batch, channels, height, width]: noise shaped like normalised images."""

    channels: int
    height: int
    width: int

    def sample_inputs(self, batch: int, rng: np.random.Generator) -> Feed:
        shape = (batch, self.channels, self.height, self.width)
        return {"pixel_values": rng.standard_normal(shape, dtype=np.float32)}


@dataclass(frozen=True)
class TokenFeeds:
    """`input_ids` and a 2-D `attention_mask` [batch, seq] (1 = a real token, right-padded), and
    `token_type_ids` (the segment of each token) where the model reads sentence pairs."""

    vocab_size: int
    max_length: int
    # The segments the model tells apart (BERT's type_vocab_size, 2); 0: it takes no token_type_ids.
    type_vocab_size: int = 0

    def feed(self, ids: np.ndarray, lengths: list[int], types: np.ndarray | None = None) -> Feed:
        """The feed of right-padded `ids`; `types` are the segment ids (none given: every token in segment 0)."""
        mask = (np.arange(ids.shape[1])[None, :] < np.asarray(lengths)[:, None]).astype(np.int64)
        feed = {"input_ids": ids.astype(np.int64), "attention_mask": mask}
        if self.type_vocab_size:
            feed["token_type_ids"] = np.zeros_like(feed["input_ids"]) if types is None else types.astype(np.int64)
        return feed

    def tokens(self, batch: int, length: int, rng: np.random.Generator) -> np.ndarray:
        return rng.integers(0, self.vocab_size, size=(batch, length))

    def sample_inputs(self, batch: int, rng: np.random.Generator) -> Feed:
        length = min(SAMPLE_LENGTH, self.max_length)
        return self.feed(self.tokens(batch, length, rng), [length] * batch)

    def edge_inputs(self) -> Feed:
        """The first and last token id of the vocabulary, and both in one row."""
        ids = np.array([[0] * 8, [self.vocab_size - 1] * 8, [0, self.vocab_size - 1] * 4])
        # Segment ids, where there are any: the first segment, the last, and a pair of the two.
        top = max(self.type_vocab_size - 1, 0)
        return self.feed(ids, [8, 8, 8], np.array([[0] * 8, [top] * 8, [0] * 4 + [top] * 4]))

    def parity_cases(self, rng: np.random.Generator) -> dict[str, Feed]:
        """A right-padded batch whose rows have different real lengths, and sequences of length 1."""
        length = min(24, self.max_length)
        lengths = sorted({length, max(1, 2 * length // 3), max(1, length // 4), 1}, reverse=True)
        return {
            f"padded seq={length} lengths={lengths}": self.feed(self.tokens(len(lengths), length, rng), lengths),
            "seq=1 b=3": self.feed(self.tokens(3, 1, rng), [1, 1, 1]),
        }

    def example_request(self, ids: list[int]) -> dict[str, Any]:
        """A pasteable body: these token ids (folded into the vocabulary) and a mask of ones."""
        return {"input_ids": [i % self.vocab_size for i in ids], "attention_mask": [1] * len(ids)}


@dataclass(frozen=True)
class AgreementWithEager:
    """A task metric for a model whose weights are its seeded initialisation, so it has no labelled data:
    how closely answers follow eager fp32's on held-out inputs (`TaskMetric.evaluate`).

    "top-1": the share of rows whose top class is eager's (a classifier); "cosine": the mean cosine
    similarity of each row's output with eager's (an encoder's embeddings). Load real weights and
    a labelled set, and a real metric takes its place (docs/real-models.md).
    """

    build: Callable[[Mapping[str, Any]], nn.Module]
    args: Mapping[str, Any]
    inputs: Callable[[int, np.random.Generator], Feed]
    input_names: tuple[str, ...]
    output: str
    output_index: int
    kind: str = "top-1"
    rows: int = 64

    def __call__(self, infer: Callable[[Feed], Mapping[str, np.ndarray]], seed: int) -> float:
        torch.manual_seed(seed)  # the weights `random_weights(build, args)(seed)` gives
        model = self.build(self.args).eval()
        feed = self.inputs(self.rows, np.random.default_rng(seed + 7919))  # not parity's or calibration's rows
        with torch.inference_mode():
            want = model(*(torch.from_numpy(feed[name]) for name in self.input_names))[self.output_index].numpy()
        got = np.asarray(infer(feed)[self.output])
        if self.kind == "top-1":
            return float(np.mean(want.argmax(-1) == got.argmax(-1)))
        w, g = want.reshape(len(want), -1).astype(np.float64), got.reshape(len(got), -1).astype(np.float64)
        return float(np.mean((w * g).sum(1) / (np.linalg.norm(w, axis=1) * np.linalg.norm(g, axis=1))))
