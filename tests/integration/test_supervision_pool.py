"""The training pool with real processes: its workers die with their parent, and a dead worker breaks no later task."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path

import pytest

from services.roots.pool import process_pool

ROOT = Path(__file__).resolve().parents[2]
LIVENESS_S = 120.0  # a spawn imports torch: seconds on a busy machine
GONE_WITHIN_S = 10.0

# A parent that starts a pool of two, prints the workers' pids and waits to be killed.
PARENT = """
import multiprocessing, time
from services.roots.pool import process_pool, warm_up
with process_pool(2) as pool:
    warm_up(pool, 2)
    print("workers", *sorted(p.pid for p in multiprocessing.active_children()), flush=True)
    time.sleep(300)
"""


def alive(pid: int) -> bool:
    """Whether `pid` runs (a zombie nobody reaped yet has ended)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return False
    return state not in ("Z", "X")


def wait_for_workers(parent: subprocess.Popen[str]) -> list[int]:
    assert parent.stdout is not None
    deadline = time.monotonic() + LIVENESS_S
    for line in parent.stdout:
        if line.startswith("workers"):
            return [int(pid) for pid in line.split()[1:]]
        assert time.monotonic() < deadline, "the pool did not start"
    raise AssertionError(f"the parent exited {parent.wait()} before its pool started")


@pytest.mark.skipif(sys.platform != "linux", reason="reads /proc")
def test_the_workers_of_a_pool_whose_parent_was_killed_with_sigkill_die_too() -> None:
    parent = subprocess.Popen(
        [sys.executable, "-c", PARENT],
        cwd=ROOT,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
        stdout=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        workers = wait_for_workers(parent)
        os.kill(parent.pid, signal.SIGKILL)  # the parent alone: nothing else tells its workers
        parent.wait(timeout=30)
        deadline = time.monotonic() + GONE_WITHIN_S
        while any(alive(pid) for pid in workers) and time.monotonic() < deadline:
            time.sleep(0.05)
        survivors = [pid for pid in workers if alive(pid)]
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(parent.pid, signal.SIGKILL)

    assert len(workers) == 2
    assert survivors == []


def test_a_pool_whose_worker_was_killed_mid_task_fails_that_task_only() -> None:
    with process_pool(1) as pool:
        worker = pool.submit(os.getpid).result(timeout=LIVENESS_S)
        sleeping = pool.submit(time.sleep, 60)
        os.kill(worker, signal.SIGKILL)
        with pytest.raises(BrokenProcessPool):
            sleeping.result(timeout=LIVENESS_S)

        after = pool.submit(os.getpid).result(timeout=LIVENESS_S)

    assert after != worker
