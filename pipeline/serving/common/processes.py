"""Whether a server's processes still run, and waiting for them to end.

A process that has exited stays in the process table as a zombie until its parent reaps it. A server's
processes outlive the command that started them, so their parent is then the machine's init, and an init
may reap late: on one machine's init, an orphan stayed a zombie for over a second. A zombie holds no
port, memory or file, so here it counts as ended; `psutil.wait_procs` waits until it is reaped.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterable

import psutil


def ended(proc: psutil.Process) -> bool:
    """Exited (a zombie counts; one that is this process's own child is reaped here) or gone."""
    try:
        if not proc.is_running():  # gone, or its PID taken by another process since
            return True
        if proc.status() != psutil.STATUS_ZOMBIE:
            return False
    except psutil.NoSuchProcess:
        return True
    with contextlib.suppress(psutil.Error):
        proc.wait(timeout=0)  # reaps our own child; another's zombie times out at once
    return True


def running(procs: Iterable[psutil.Process]) -> list[psutil.Process]:
    return [p for p in procs if not ended(p)]


def wait_ended(procs: Iterable[psutil.Process], timeout: float) -> list[psutil.Process]:
    """Wait up to `timeout` seconds for each of `procs` to end; those still running then."""
    deadline = time.monotonic() + timeout
    alive = running(procs)
    while alive and time.monotonic() < deadline:
        time.sleep(0.02)
        alive = running(alive)
    return alive
