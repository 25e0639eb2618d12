"""A small CNN that reads 8x8 handwritten digits (scikit-learn's `load_digits`).

Softmax and argmax are part of `forward`, so the ONNX graph itself answers with
`probabilities` (float32, one per class) and `label` (int64): the endpoint returns
both without any model code in the handler. The data set ships inside scikit-learn,
so training needs no download.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
import torch
import torch.nn as nn

from pipeline.spec import Feed, ModelSpec, TaskMetric, TensorSpec, Tolerance, TrainResult

CLASSES = 10
PIXEL_MAX = 16.0  # load_digits pixels are counts 0..16
HELD_OUT = 0.2


class DigitsCNN(nn.Module):
    def __init__(self, channels: int = 16):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, channels, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(channels, 2 * channels, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
        )
        self.head = nn.Sequential(nn.Flatten(), nn.Linear(2 * channels * 4 * 4, 64), nn.ReLU(), nn.Linear(64, CLASSES))

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        # Scaling lives in the graph: clients send the data set's raw 0..16 pixels.
        logits = self.head(self.features(image.unsqueeze(1) / PIXEL_MAX))
        probabilities = torch.softmax(logits, dim=1)
        return probabilities, probabilities.argmax(dim=1)


def build(args: Mapping[str, Any]) -> nn.Module:
    return DigitsCNN(channels=int(args.get("channels", 16)))


def load_split(seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(train images, train labels, held-out images, held-out labels), stratified and seeded."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    images = digits.images.astype(np.float32)
    return tuple(train_test_split(images, digits.target.astype(np.int64), test_size=HELD_OUT, random_state=seed, stratify=digits.target))


def train(seed: int, epochs: int = 15, batch_size: int = 64, lr: float = 2e-3, channels: int = 16) -> TrainResult:
    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    x_train, x_test, y_train, y_test = (torch.from_numpy(a) for a in load_split(seed))
    model = DigitsCNN(channels)
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    loss_fn = nn.CrossEntropyLoss()
    for _ in range(epochs):
        model.train()
        for idx in torch.randperm(len(x_train), generator=generator).split(batch_size):
            # Train on the logits (log of the probabilities is less stable).
            logits = model.head(model.features(x_train[idx].unsqueeze(1) / PIXEL_MAX))
            loss = loss_fn(logits, y_train[idx])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    model.eval()
    with torch.inference_mode():
        _, label = model(x_test)
        accuracy = (label == y_test).float().mean().item()
    metrics = {"held_out_accuracy": accuracy, "held_out_images": float(len(y_test)), "final_loss": float(loss.item())}
    return TrainResult(model.state_dict(), {"channels": channels}, metrics)


def sample_inputs(batch: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
    # Noise over the whole pixel range: parity cares about every path, not only digit-like ones.
    return {"image": rng.uniform(0.0, PIXEL_MAX, size=(batch, 8, 8)).astype(np.float32)}


def edge_inputs() -> dict[str, np.ndarray]:
    blank = np.zeros((8, 8), np.float32)
    full = np.full((8, 8), PIXEL_MAX, np.float32)
    checker = (np.indices((8, 8)).sum(axis=0) % 2 * PIXEL_MAX).astype(np.float32)
    bar = blank.copy()
    bar[:, 3:5] = PIXEL_MAX
    return {"image": np.stack([blank, full, checker, bar])}


def calibration_inputs(rng: np.random.Generator, rows: int = 256) -> dict[str, np.ndarray]:
    """Real training digits (never held-out ones): int8 ranges fitted to noise would waste their levels."""
    x_train, _, _, _ = load_split(0)
    return {"image": x_train[rng.choice(len(x_train), size=rows, replace=False)]}


def held_out_accuracy(infer: Callable[[Feed], Mapping[str, np.ndarray]], seed: int) -> float:
    """The share of the held-out digits (of the split the model trained with `seed`) labelled right."""
    _, x_test, _, y_test = load_split(seed)
    return float(np.mean(infer({"image": x_test})["label"] == y_test))


SPEC = ModelSpec(
    name="digits_cnn",
    inputs=(TensorSpec("image", "float32", ("batch", 8, 8), low=0.0, high=PIXEL_MAX),),
    outputs=(
        TensorSpec("probabilities", "float32", ("batch", CLASSES)),
        TensorSpec("label", "int64", ("batch",)),
    ),
    build=build,
    train=train,
    sample_inputs=sample_inputs,
    edge_inputs=edge_inputs,
    tolerance=Tolerance(atol=1e-5, rtol=1e-4),
    # Only used with --cuda-precision tf32 (served precision stays fp32 unless asked):
    # TF32 moved these probabilities by 2.5e-3 on an H200.
    tf32_tolerance=Tolerance(atol=1e-2, rtol=1e-2),
    max_rows_per_request=1024,
    # int8 moves probabilities by up to a few hundredths and can flip the label of a
    # near-tie on noise inputs; held-out accuracy decides whether that matters.
    int8_tolerance=Tolerance(atol=0.05, rtol=0.05, max_mismatch=0.05),
    fp16_tolerance=Tolerance(atol=1e-2, rtol=1e-2, max_mismatch=0.01),
    task_metric=TaskMetric("held-out accuracy", held_out_accuracy, max_drop=0.005),
    calibration_inputs=calibration_inputs,
    # A "1": a vertical bar.
    example_request={"image": [[0, 0, 0, 8, 8, 0, 0, 0]] * 8},
)
