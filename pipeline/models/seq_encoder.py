"""A one-layer causal transformer encoder with a dynamic sequence length.

`tokens` (int64 digits 0..9, shape [batch, seq]) go in; `running_mean` (float32,
[batch, seq]) comes out: at each position, the mean of the digits so far divided by
9. Causal attention that spreads evenly over the prefix computes exactly that, so a
short training run learns it. Both `batch` and `seq` are dynamic axes of the ONNX
graph; parity checks several lengths, including 1.

The attention is written with plain ops and `scaled_dot_product_attention`:
`nn.TransformerEncoderLayer`'s fused fast path traces to a graph that changes with
the input, which the trace check rightly refuses.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from pipeline.spec import ModelSpec, TensorSpec, Tolerance, TrainResult

VOCAB = 10
# The length sample_inputs uses (trace and export examples, benchmarks): >= 2 and
# unlike the export's batch of 4, or torch.export would specialise or merge the axes.
SAMPLE_LENGTH = 12


class CausalEncoder(nn.Module):
    def __init__(self, dim: int = 16, heads: int = 2, hidden: int = 32):
        super().__init__()
        self.heads = heads
        self.embed = nn.Embedding(VOCAB, dim)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.attn_out = nn.Linear(dim, dim)
        self.norm1 = nn.LayerNorm(dim)
        self.ff = nn.Sequential(nn.Linear(dim, hidden), nn.ReLU(), nn.Linear(hidden, dim))
        self.norm2 = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, 1)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        x = self.embed(tokens)
        b, n, d = x.shape
        q, k, v = self.qkv(x).reshape(b, n, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        attended = F.scaled_dot_product_attention(q, k, v, is_causal=True).transpose(1, 2).reshape(b, n, d)
        x = self.norm1(x + self.attn_out(attended))
        x = self.norm2(x + self.ff(x))
        return self.head(x).squeeze(-1)


def build(args: Mapping[str, Any]) -> nn.Module:
    return CausalEncoder(int(args.get("dim", 16)), int(args.get("heads", 2)), int(args.get("hidden", 32)))


def running_mean(tokens: torch.Tensor) -> torch.Tensor:
    steps = torch.arange(1, tokens.shape[1] + 1, dtype=torch.float32)
    return tokens.float().cumsum(dim=1) / steps / (VOCAB - 1)


def train(seed: int, steps: int = 600, batch: int = 64, lr: float = 3e-3) -> TrainResult:
    torch.manual_seed(seed)
    g = torch.Generator().manual_seed(seed)
    model = CausalEncoder()
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=steps)
    for _ in range(steps):
        # A new length every step: the model must not learn one length.
        length = int(torch.randint(1, 33, (1,), generator=g))
        tokens = torch.randint(0, VOCAB, (batch, length), generator=g)
        loss = F.mse_loss(model(tokens), running_mean(tokens))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        schedule.step()
    model.eval()
    metrics = {}
    with torch.inference_mode():
        for length in (1, 16, 64):
            tokens = torch.randint(0, VOCAB, (256, length), generator=g)
            err = (model(tokens) - running_mean(tokens)).abs()
            metrics[f"mean_abs_error_len{length}"] = err.mean().item()
    return TrainResult(model.state_dict(), {"dim": 16, "heads": 2, "hidden": 32}, metrics)


def tokens(batch: int, length: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
    return {"tokens": rng.integers(0, VOCAB, size=(batch, length)).astype(np.int64)}


def sample_inputs(batch: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
    return tokens(batch, SAMPLE_LENGTH, rng)


def edge_inputs() -> dict[str, np.ndarray]:
    # All zeros, all nines, and alternating extremes.
    return {"tokens": np.array([[0] * 8, [VOCAB - 1] * 8, [0, VOCAB - 1] * 4], dtype=np.int64)}


def parity_cases(rng: np.random.Generator) -> dict[str, dict[str, np.ndarray]]:
    """Lengths other than the sample's, 1 and longer than any seen in training among them."""
    shapes = [(1, 1), (5, 1), (64, 1), (3, 2), (7, 33), (2, 100)]
    return {f"seq={n} b={b}": tokens(b, n, rng) for b, n in shapes}


SPEC = ModelSpec(
    name="seq_encoder",
    inputs=(TensorSpec("tokens", "int64", ("batch", "seq"), low=0, high=VOCAB - 1),),
    outputs=(TensorSpec("running_mean", "float32", ("batch", "seq")),),
    build=build,
    train=train,
    sample_inputs=sample_inputs,
    edge_inputs=edge_inputs,
    parity_cases=parity_cases,
    tolerance=Tolerance(atol=1e-5, rtol=1e-4),
    max_rows_per_request=256,
    # Attention is quadratic in seq: one row of 16,000 tokens took 6.1 GB. At these caps a
    # request costs at most 16 rows of 1,024 tokens' attention.
    max_lengths={"seq": 1024},
    max_elements_per_request=16384,
    example_request={"tokens": [3, 1, 4, 1, 5, 9, 2, 6]},
)
