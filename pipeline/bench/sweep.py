"""How long the in-process benchmark runs: calls per engine, and which batch sizes fit.

Each engine and batch size gets a warm-up and then timed calls sized to a time budget
(`calibrate`). The batch sweep is sized to the model by the rule parity's also follows (`cost.Sizing`):
batch sizes up to `cost.MIN_SWEEP` always run; a larger one runs for an engine only where
that engine's measured cost at the largest batch it ran, scaled by rows, fits the
seconds left of the budget, and only where the memory the last batch took, scaled the
same way, fits the memory budget. A ResNet-50 then stops at batch 8 or 64 on a small
CPU, where `simple_nn` sweeps to 4096; the report lists what was left out and why.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Literal

import numpy as np

from pipeline.artifacts import cost

# The first calls compile, capture or record (torch.compile's CUDA graphs replay from the
# third), so they are never part of a per-call estimate.
FIRST_CALLS = 3
WARM_CALLS = 10


@dataclass(frozen=True)
class CallBudget:
    """Seconds of timed calls per engine and batch, split over rounds, after a warm-up."""

    budget_s: float
    rounds: int
    warmup_s: float
    max_iterations: int


def time_calls(call: Callable[[], object], n: int) -> np.ndarray:
    """Wall time of each of n calls, in ns; the loop itself is outside the timed span."""
    out = np.empty(n, dtype=np.int64)
    clock = time.perf_counter_ns
    for i in range(n):
        start = clock()
        call()
        out[i] = clock() - start
    return out


def warm_calls(per_call_s: float, budget: CallBudget) -> int:
    """Warm-up calls after the first ones: ten while calls are quick, fewer once one call outlasts the warm-up."""
    return max(2, min(WARM_CALLS, math.ceil(budget.warmup_s / max(per_call_s, 1e-9))))


def per_round(per_call_s: float, budget: CallBudget) -> int:
    """Timed calls per round: the budget's worth, at least a few, and never 3x the budget on a slow call."""
    per_call_s = max(per_call_s, 1e-9)
    total = max(budget.budget_s / per_call_s, 3 * budget.rounds)
    total = min(total, max(budget.rounds, 3 * budget.budget_s / per_call_s), budget.max_iterations)
    return max(1, math.ceil(total / budget.rounds))


def warm_seconds(per_call_s: float, budget: CallBudget) -> float:
    """What `calibrate` spends warming up an engine whose call takes `per_call_s`."""
    return max((FIRST_CALLS + warm_calls(per_call_s, budget)) * per_call_s, budget.warmup_s)


def expected_seconds(per_call_s: float, budget: CallBudget) -> float:
    """What `calibrate` and the timed rounds spend on an engine whose call takes `per_call_s`."""
    return warm_seconds(per_call_s, budget) + budget.rounds * per_round(per_call_s, budget) * per_call_s


def calibrate(call: Callable[[], object], budget: CallBudget) -> int:
    """Warm up (compiles, caches, allocator pools), then size each round to the budget.

    The warm-up runs until both its time and a minimum number of calls are spent; the
    per-call estimate is the median of its last calls.
    """
    third_s = float(time_calls(call, FIRST_CALLS)[-1]) / 1e9
    deadline = time.perf_counter() + budget.warmup_s
    warm = list(time_calls(call, warm_calls(third_s, budget)))
    while time.perf_counter() < deadline:
        warm.extend(time_calls(call, 5 if third_s < 0.01 else 1))
    return per_round(float(np.median(warm[-WARM_CALLS:])) / 1e9, budget)


@dataclass(frozen=True)
class Cost:
    """What one engine cost at one batch size: the basis for its estimate at the next."""

    batch: int
    per_call_s: float
    # Setup beyond its calls (compiling, a session per shape): spent again at each batch size.
    overhead_s: float
    # Memory the whole batch step took above where it began (MiB), every engine together.
    extra_mb: float = 0.0


@dataclass
class Deadline:
    """The end of the whole benchmark (`--time-limit`): no work starts after it, nor any whose known cost overruns it.

    Work under way is not cut short (a compile cannot be), so a caller with a hard end of
    its own gives the limit with a margin for the longest single step.
    """

    limit_s: float | None = None
    began: float = field(default_factory=time.perf_counter)

    def left_s(self) -> float:
        return math.inf if self.limit_s is None else self.limit_s - (time.perf_counter() - self.began)

    def over(self, need_s: float = 0.0, basis: str = "") -> str | None:
        """None while `need_s` more seconds fit before the end; otherwise why the work is left out."""
        left = self.left_s()
        if left > 0 and need_s <= left:
            return None
        if left <= 0:
            return f"the --time-limit of {self.limit_s:.0f} s was reached"
        return f"would take about {need_s:.0f} s, {left:.0f} s left of the --time-limit of {self.limit_s:.0f} s ({basis})"


@dataclass
class Sweep:
    """What the sweep may spend, what it ran, and what it left out and why (the report's "sweep")."""

    mode: Literal["sized", "full"]
    asked: list[int]
    seconds: float
    memory_mb: float
    spent_s: float = 0.0
    ran: list[dict] = field(default_factory=list)
    skipped: list[dict] = field(default_factory=list)
    # What the engines admitted at the batch size under way are expected to take.
    reserved_s: float = field(default=0.0, repr=False)
    deadline: Deadline = field(default_factory=Deadline, repr=False)

    @property
    def sizing(self) -> cost.Sizing:
        return cost.Sizing(self.seconds, self.memory_mb, self.mode == "full")

    def batch_fits(self, device: str, batch: int, last: Cost | None) -> bool:
        """Whether `batch` fits the time limit and the memory budget, from the memory the last batch size took (recorded when not)."""
        if not self._fits(device, batch, None, self.deadline.over()):
            return False
        if last is None or self.sizing.always(batch):
            return True
        basis = f"batch {last.batch} took {last.extra_mb:.0f} MiB"
        return self._fits(device, batch, None, self.sizing.over_memory(cost.scaled(last.extra_mb, last.batch, batch), basis))

    def engine_fits(self, device: str, batch: int, engine: str, last: Cost | None, budget: CallBudget) -> bool:
        """Whether `engine` at `batch` fits the seconds left (of the sweep's budget and of the time limit), from its cost at
        the largest batch it ran."""
        if last is None:
            return True
        need_s = last.overhead_s + expected_seconds(cost.scaled(last.per_call_s, last.batch, batch), budget)
        setup = f", setup {last.overhead_s:.0f} s" if last.overhead_s >= 1 else ""
        basis = f"one call took {last.per_call_s * 1e3:.3g} ms at batch {last.batch}{setup}"
        reason = self.deadline.over(self.reserved_s + need_s, basis)
        if reason is None and not self.sizing.always(batch):
            reason = self.sizing.over_time(need_s, self.seconds - self.spent_s - self.reserved_s, basis)
        if not self._fits(device, batch, engine, reason):
            return False
        self.reserved_s += need_s
        return True

    def may_start(self, device: str, batch: int, engine: str) -> bool:
        """Whether an admitted engine may still warm up at `batch`: not once the time limit is reached (recorded)."""
        return self._fits(device, batch, engine, self.deadline.over())

    def _fits(self, device: str, batch: int, engine: str | None, reason: str | None) -> bool:
        """True without a reason; otherwise the batch (or the engine at it) is recorded as left out."""
        if reason is not None:
            self.skipped.append({"device": device, "batch": batch, "engine": engine, "reason": reason})
        return reason is None

    def finish_batch(self, device: str, batch: int, engines: list[str], seconds: float) -> None:
        """Record what a batch size ran and what it really took, in place of its estimate."""
        self.ran.append({"device": device, "batch": batch, "engines": engines})
        self.spent_s += seconds
        self.reserved_s = 0.0

    def to_json(self) -> dict:
        out = asdict(self)
        del out["reserved_s"], out["deadline"]
        out["time_limit_s"] = self.deadline.limit_s
        return out
