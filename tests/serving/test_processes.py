"""A server's processes count as ended once they exit, whoever reaps them (pipeline/serving/common/processes.py)."""

from __future__ import annotations

import subprocess
import sys
import time

import psutil

from pipeline.serving.common.processes import ended, running, wait_ended


def until_zombie(proc: psutil.Process) -> None:
    deadline = time.monotonic() + 10
    while proc.status() != psutil.STATUS_ZOMBIE:
        assert time.monotonic() < deadline, proc
        time.sleep(0.01)


def test_a_zombie_that_another_process_holds_is_ended_at_once():
    """What a server's Java looks like once it has exited and its parent has gone: a zombie that only
    init may reap, and late. Here the parent holds it on purpose, for as long as the test runs."""
    holder = subprocess.Popen(
        [sys.executable, "-c", "import subprocess, time; p = subprocess.Popen(['true']); print(p.pid, flush=True); time.sleep(60)"],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        zombie = psutil.Process(int(holder.stdout.readline()))
        until_zombie(zombie)
        assert psutil.pid_exists(zombie.pid)  # still in the process table: psutil.wait_procs would wait for it
        started = time.monotonic()
        assert wait_ended([zombie], timeout=30) == [] and time.monotonic() - started < 1
        assert ended(zombie) and running([zombie, psutil.Process(holder.pid)]) == [psutil.Process(holder.pid)]
    finally:
        holder.kill()
        holder.wait()


def test_our_own_child_is_reaped_and_a_running_one_waited_for():
    child = subprocess.Popen(["sleep", "60"])
    try:
        proc = psutil.Process(child.pid)
        assert not ended(proc)
        started = time.monotonic()
        assert wait_ended([proc], timeout=0.3) == [proc] and time.monotonic() - started >= 0.3
        proc.kill()
        until_zombie(proc)
        assert ended(proc) and not psutil.pid_exists(child.pid)  # reaped here, not left for later
    finally:
        child.kill()
