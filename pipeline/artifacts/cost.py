"""What making an artifact cost: wall seconds and peak resident memory.

A sampler thread reads the process's resident size every few milliseconds (one read of
/proc/self/statm, or psutil elsewhere) and keeps the peak since the stage began
(`start`) and since a block began (`measure`, which parity uses per case). The sampler
can miss a peak while a C call holds the GIL, so the kernel's own peak (VmHWM, the
process's largest since it started) is read too: when it rose during the stage or block,
the peak was reached there, and it is the figure. The kernel's peak is never reset:
resetting it would make `/usr/bin/time` and every other outside tool report one stage's
peak as the whole run's.
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass

import psutil

MB = 1 << 20
INTERVAL_S = 0.002
_PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


def _kernel_peak_mb() -> float:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def rss_mb() -> float:
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * _PAGE / MB
    except OSError:
        return psutil.Process().memory_info().rss / MB


class _Sampler:
    """The peaks since the stage and the block began, kept by one daemon thread."""

    def __init__(self) -> None:
        self.stage_peak = self.block_peak = rss_mb()
        self.stage_kernel = self.block_kernel = _kernel_peak_mb()  # the kernel's peak when each began
        self.lock = threading.Lock()
        threading.Thread(target=self._run, name="rss-sampler", daemon=True).start()

    def _run(self) -> None:
        while True:
            self.sample()
            time.sleep(INTERVAL_S)

    def sample(self) -> float:
        now = rss_mb()
        with self.lock:
            self.stage_peak = max(self.stage_peak, now)
            self.block_peak = max(self.block_peak, now)
        return now


_sampler: _Sampler | None = None


def _get() -> _Sampler:
    global _sampler
    if _sampler is None:
        _sampler = _Sampler()
    return _sampler


def start() -> None:
    """Begin measuring a stage: its peak counts from now."""
    sampler = _get()
    with sampler.lock:
        sampler.stage_peak = rss_mb()
        sampler.stage_kernel = _kernel_peak_mb()


def _peak(sampled: float, kernel_at_start: float) -> float:
    kernel = _kernel_peak_mb()
    return max(sampled, kernel) if kernel > kernel_at_start else sampled


def peak_mb() -> float:
    """The peak resident memory since `start()` (MiB)."""
    sampler = _get()
    sampler.sample()
    return round(_peak(sampler.stage_peak, sampler.stage_kernel), 1)


# Batch sizes up to this run whatever they cost, in parity and in the benchmark: they are
# cheap, and batch 1, 2 and 7 are what catch a batch size baked into the graph.
MIN_SWEEP = 8


def scaled(value: float, measured_at: int, batch: int) -> float:
    """A cost measured at one batch size, scaled by rows to another."""
    return value * batch / measured_at


@dataclass(frozen=True)
class Sizing:
    """The rule both sized sweeps (parity's and the benchmark's) follow.

    A batch size up to `MIN_SWEEP` always runs. A larger one runs only where what a smaller
    batch cost, scaled by rows (`scaled`), fits: its memory within `memory_mb`, its
    seconds within what is left of `seconds`. `full` runs every batch size.
    """

    seconds: float
    memory_mb: float
    full: bool = False

    def always(self, batch: int) -> bool:
        """Whether `batch` runs whatever it costs."""
        return self.full or batch <= MIN_SWEEP

    def over_memory(self, need_mb: float, basis: str) -> str | None:
        """None when `need_mb` fits the memory budget; otherwise the reason, with what the estimate rests on."""
        if need_mb <= self.memory_mb:
            return None
        return f"would take about {need_mb:.0f} MiB, over the {self.memory_mb:.0f} MiB budget ({basis})"

    def over_time(self, need_s: float, left_s: float, basis: str) -> str | None:
        """None when `need_s` fits the `left_s` seconds still free; otherwise the reason."""
        if need_s <= left_s:
            return None
        return f"would take about {need_s:.0f} s, {max(left_s, 0):.0f} s left of the {self.seconds:.0f} s budget ({basis})"


@dataclass
class Cost:
    """One measured run: seconds, and how far memory rose above where it started (MiB)."""

    seconds: float = 0.0
    extra_mb: float = 0.0


@contextlib.contextmanager
def measure() -> Iterator[Cost]:
    """Time a block and measure its own peak above the memory in use when it began."""
    sampler = _get()
    base = rss_mb()
    with sampler.lock:
        sampler.block_peak = base
        sampler.block_kernel = _kernel_peak_mb()
    cost = Cost()
    began = time.perf_counter()
    try:
        yield cost
    finally:
        cost.seconds = time.perf_counter() - began
        sampler.sample()
        cost.extra_mb = max(_peak(sampler.block_peak, sampler.block_kernel) - base, 0.0)
