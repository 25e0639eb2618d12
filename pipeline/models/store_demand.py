"""Two inputs, two outputs of different shapes and dtypes: demand per store.

`features` (float32, 4 per row) and `store` (int64, an index into an embedding)
go in; `demand` (float32, 1 per row) and `level` (int64: 0 low, 1 normal, 2 high)
come out. The store id declares its range, so the endpoint refuses an unknown store
with a 400 instead of ONNX Runtime failing the whole batch on an out-of-range index.
The data is synthetic: each store has its own linear demand curve.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, cast

import numpy as np
import torch
import torch.nn as nn

from pipeline.spec import Feed, ModelSpec, TaskMetric, TensorSpec, Tolerance, TrainResult

STORES = 8
FEATURES = 4
# `level` counts how many of these the demand exceeds.
LEVEL_THRESHOLDS = (-1.0, 1.0)


class StoreDemand(nn.Module):
    def __init__(self, stores: int = STORES, embedding: int = 8, hidden: int = 32):
        super().__init__()
        self.store_embedding = nn.Embedding(stores, embedding)
        self.store_bias = nn.Embedding(stores, 1)
        self.mlp = nn.Sequential(nn.Linear(FEATURES + embedding, hidden), nn.ReLU(), nn.Linear(hidden, 1))
        self.register_buffer("thresholds", torch.tensor(LEVEL_THRESHOLDS))

    def forward(self, features: torch.Tensor, store: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        demand = self.mlp(torch.cat([features, self.store_embedding(store)], dim=1)) + self.store_bias(store)
        level = (demand > self.thresholds).sum(dim=1)
        return demand, level


def build(args: Mapping[str, Any]) -> nn.Module:
    return StoreDemand(int(args.get("stores", STORES)), int(args.get("embedding", 8)), int(args.get("hidden", 32)))


def synthetic(seed: int, rows: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Features, store ids and demand = features · w[store] + b[store], with fixed per-store w, b."""
    truth = torch.Generator().manual_seed(1234)  # the same stores for every seed
    w = torch.randn(STORES, FEATURES, generator=truth) * 0.5
    b = torch.randn(STORES, generator=truth) * 0.5
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(rows, FEATURES, generator=g) * 4 - 2
    store = torch.randint(0, STORES, (rows,), generator=g)
    return x, store, ((x * w[store]).sum(dim=1) + b[store]).unsqueeze(1)


def train(seed: int, steps: int = 800, lr: float = 1e-2) -> TrainResult:
    torch.manual_seed(seed)
    x, store, y = synthetic(seed, 4096)
    model = StoreDemand()
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=steps)
    for _ in range(steps):
        demand, _ = model(x, store)
        loss = nn.functional.mse_loss(demand, y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        schedule.step()
    model.eval()
    x_test, store_test, y_test = synthetic(seed + 1, 1024)
    with torch.inference_mode():
        demand, level = model(x_test, store_test)
        want_level = (y_test > cast(torch.Tensor, model.thresholds)).sum(dim=1)  # a buffer
    metrics = {
        "held_out_mse": nn.functional.mse_loss(demand, y_test).item(),
        "held_out_level_accuracy": (level == want_level).float().mean().item(),
    }
    return TrainResult(model.state_dict(), {"stores": STORES, "embedding": 8, "hidden": 32}, metrics)


def sample_inputs(batch: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
    return {
        "features": rng.uniform(-2.0, 2.0, size=(batch, FEATURES)).astype(np.float32),
        "store": rng.integers(0, STORES, size=batch).astype(np.int64),
    }


def edge_inputs() -> dict[str, np.ndarray]:
    values = np.array([0.0, -0.0, 1e3, -1e3, 1e-30, np.finfo(np.float32).tiny], np.float32)
    features = np.repeat(values[:, None], FEATURES, axis=1)
    # Every store, including the first and last index of the embedding.
    store = np.arange(len(values), dtype=np.int64) % STORES
    store[-1] = STORES - 1
    return {"features": features, "store": store}


def held_out_mse(infer: Callable[[Feed], Mapping[str, np.ndarray]], seed: int) -> float:
    """Mean squared error of `demand` on the held-out rows of the model trained with `seed`."""
    x, store, y = synthetic(seed + 1, 1024)
    demand = infer({"features": x.numpy(), "store": store.numpy()})["demand"]
    return float(np.mean((demand.astype(np.float64) - y.numpy()) ** 2))


SPEC = ModelSpec(
    name="store_demand",
    inputs=(
        TensorSpec("features", "float32", ("batch", FEATURES)),
        TensorSpec("store", "int64", ("batch",), low=0, high=STORES - 1),
    ),
    outputs=(
        TensorSpec("demand", "float32", ("batch", 1)),
        TensorSpec("level", "int64", ("batch",)),
    ),
    build=build,
    train=train,
    sample_inputs=sample_inputs,
    edge_inputs=edge_inputs,
    tolerance=Tolerance(atol=1e-5, rtol=1e-4),
    # int8 weights move demand by a few hundredths; `level` may flip for a demand at a threshold.
    int8_tolerance=Tolerance(atol=0.1, rtol=0.05, max_mismatch=0.05),
    fp16_tolerance=Tolerance(atol=1e-2, rtol=1e-2, max_mismatch=0.01),
    # Held-out MSE is about 0.0009 in fp32; a variant may add at most 0.001.
    task_metric=TaskMetric("held-out MSE", held_out_mse, max_drop=0.001, higher_is_better=False),
    example_request={"features": [0.5, -1.0, 1.5, 0.0], "store": 3},
)
