"""What making an artifact cost: wall seconds and the process's peak resident memory.

The kernel keeps one peak (VmHWM) per process, and writing 5 to /proc/self/clear_refs
resets it to the current size. A stage's peak is measured from `start()`; parity also
measures each case on its own (`measure`), and the peaks it resets are folded into the
stage's, so the manifest records the stage's true peak either way. Where the reset is
not allowed (not Linux), the peak is the process's peak so far, and says so.
"""

from __future__ import annotations

import contextlib
import resource
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass

import psutil

MB = 1 << 20
_stage_peak_mb = 0.0  # the largest peak seen since start(), across the resets measure() makes


def rss_mb() -> float:
    return psutil.Process().memory_info().rss / MB


def _kernel_peak_mb() -> float:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    # ru_maxrss is in KiB on Linux, bytes on macOS; it never resets.
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / MB if sys.platform == "darwin" else peak / 1024


def _reset_kernel_peak() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def start() -> None:
    """Begin measuring a stage: its peak counts from now."""
    global _stage_peak_mb
    _stage_peak_mb = 0.0
    _reset_kernel_peak()


def peak_mb() -> float:
    """The peak resident memory since `start()` (MiB)."""
    return round(max(_stage_peak_mb, _kernel_peak_mb()), 1)


@dataclass
class Cost:
    """One measured run: seconds, and how far memory rose above where it started (MiB)."""

    seconds: float = 0.0
    extra_mb: float = 0.0


@contextlib.contextmanager
def measure() -> Iterator[Cost]:
    """Time a block and measure its own peak above the memory in use when it began."""
    global _stage_peak_mb
    _stage_peak_mb = max(_stage_peak_mb, _kernel_peak_mb())
    exact = _reset_kernel_peak()
    base = rss_mb()
    cost = Cost()
    began = time.perf_counter()
    try:
        yield cost
    finally:
        cost.seconds = time.perf_counter() - began
        peak = _kernel_peak_mb() if exact else max(rss_mb(), base)
        cost.extra_mb = max(peak - base, 0.0)
        _stage_peak_mb = max(_stage_peak_mb, peak)
