"""The seed example: a 1 -> 16 -> 1 MLP with ReLU that learns y = 2x + 1."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
import torch.nn as nn
from tqdm import tqdm

from pipeline.spec import ModelSpec, TensorSpec, Tolerance, TrainResult

# Users send x in roughly [-10, 10]; the seed trained on randn (mostly |x| < 2),
# so it answered f(5) = 11.19. Training on the range users send fixes that.
TRAIN_RANGE = (-10.0, 10.0)


class SimpleNN(nn.Module):
    def __init__(self, hidden: int = 16):
        super().__init__()
        self.layer1 = nn.Linear(1, hidden)
        self.layer2 = nn.Linear(hidden, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layer2(torch.relu(self.layer1(x)))


def build(args: Mapping[str, Any]) -> nn.Module:
    return SimpleNN(hidden=int(args.get("hidden", 16)))


def train(seed: int, epochs: int = 3000, samples: int = 2048, lr: float = 0.01, hidden: int = 16) -> TrainResult:
    generator = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    lo, hi = TRAIN_RANGE
    x = torch.rand(samples, 1, generator=generator) * (hi - lo) + lo
    y = 2 * x + 1
    model = SimpleNN(hidden)
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    # Decay the step size so the fit settles instead of jittering around the optimum.
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=epochs)
    loss_fn = nn.MSELoss()
    bar = tqdm(range(epochs), desc="train simple_nn", unit="epoch", disable=None, mininterval=0.5)
    for _ in bar:
        loss = loss_fn(model(x), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        schedule.step()
        bar.set_postfix(loss=f"{loss.item():.2e}", refresh=False)
    model.eval()
    with torch.inference_mode():
        probe = torch.linspace(lo, hi, 201).unsqueeze(1)
        max_err = (model(probe) - (2 * probe + 1)).abs().max().item()
        f5 = model(torch.tensor([[5.0]])).item()
    metrics = {"final_loss": float(loss.item()), "max_abs_error_on_range": max_err, "f(5)": f5}
    return TrainResult(model.state_dict(), {"hidden": hidden}, metrics)


def sample_inputs(batch: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
    return {"x": rng.uniform(-10.0, 10.0, size=(batch, 1)).astype(np.float32)}


def edge_inputs() -> dict[str, np.ndarray]:
    values = [0.0, -0.0, 1e3, -1e3, 1e-30, -1e-30, 1e-45, np.finfo(np.float32).tiny, 1.0, -1.0]
    return {"x": np.array(values, dtype=np.float32).reshape(-1, 1)}


SPEC = ModelSpec(
    name="simple_nn",
    inputs=(TensorSpec("x", "float32", ("batch", 1)),),
    outputs=(TensorSpec("y", "float32", ("batch", 1)),),
    build=build,
    train=train,
    sample_inputs=sample_inputs,
    edge_inputs=edge_inputs,
    tolerance=Tolerance(atol=1e-5, rtol=1e-4),
    max_rows_per_request=4096,
    example_request={"x": 5.0},
)
