"""Seconds and peak memory: a block's own rise, and a stage's peak, without touching the kernel's counter."""

import threading
from collections.abc import Callable

import numpy as np

from pipeline.artifacts import cost


def _kernel_peak() -> str:
    with open("/proc/self/status") as f:
        return next(line for line in f if line.startswith("VmHWM:"))


def _sampler_reads(monkeypatch) -> Callable[[int], bool]:
    """wait(n): True once the sampler thread has read the resident size n more times (within 10 s)."""
    reads = threading.Semaphore(0)
    real = cost.rss_mb

    def rss_mb() -> float:
        now = real()
        if threading.current_thread().name == "rss-sampler":
            reads.release()
        return now

    monkeypatch.setattr(cost, "rss_mb", rss_mb)

    def wait(n: int) -> bool:
        while reads.acquire(blocking=False):  # reads from before the call
            pass
        return all(reads.acquire(timeout=10) for _ in range(n))

    return wait


def test_a_block_measures_its_own_rise_and_the_stage_keeps_the_peak(monkeypatch):
    # The kernel's peak rises with the block only in a process that never stood higher; after other tests it has,
    # and the figure is the sampler thread's alone. So the block stays resident until the thread has read it:
    # the read in flight may have begun before the block, the next one began after it and was kept before a third.
    sampler_read = _sampler_reads(monkeypatch)
    cost.start()
    before = cost.rss_mb()
    with cost.measure() as big:
        block = np.ones(40_000_000)  # 305 MiB
        assert sampler_read(3)
        del block
    with cost.measure() as small:
        block = np.ones(1_000_000)
        del block
    assert 250 < big.extra_mb < 400 and small.extra_mb < 50
    assert big.seconds > 0
    assert cost.peak_mb() >= before + 250


def test_the_kernels_peak_is_left_for_outside_tools():
    cost.start()
    block = np.ones(20_000_000)  # 153 MiB: the kernel's peak now stands well above what stays resident
    del block
    peak = int(_kernel_peak().split()[1])
    assert peak / 1024 >= cost.rss_mb() + 100  # so a reset (down to the resident size) would show
    cost.start()
    assert int(_kernel_peak().split()[1]) >= peak  # never reset: /usr/bin/time still sees the run's peak
