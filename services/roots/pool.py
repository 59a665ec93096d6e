"""The training/evaluation process pool: spawned (never forked from a process running gRPC), one torch thread each.

Two failures of a plain ProcessPoolExecutor are handled here. Its workers outlive a parent killed with
SIGKILL (each holds a model and a dataset, and the parent's output pipe); here each one dies with its
parent. And one worker that dies (killed, out of memory, a crash in native code) breaks the executor for
good; here only the tasks it had fail, with BrokenProcessPool, and the next task gets a fresh pool.
"""

from __future__ import annotations

import contextlib
import logging
import multiprocessing
import os
import signal
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import Executor, Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from typing import ParamSpec, TypeVar

from ops.lifecycle import die_with_parent

log = logging.getLogger(__name__)
P = ParamSpec("P")
T = TypeVar("T")


class ProcessPool(Executor):
    """A spawned process pool that starts a new one when a dead worker broke it."""

    def __init__(self, workers: int, device: str = "cpu") -> None:
        self.workers = workers
        self._device = device
        self._lock = threading.Lock()
        self._pool = self._start()

    def _start(self) -> ProcessPoolExecutor:
        return ProcessPoolExecutor(
            max_workers=self.workers,
            mp_context=multiprocessing.get_context("spawn"),
            initializer=init_pool_worker,
            initargs=(os.getpid(), self._device),
        )

    def submit(self, fn: Callable[P, T], /, *args: P.args, **kwargs: P.kwargs) -> Future[T]:
        with self._lock:
            try:
                return self._pool.submit(fn, *args, **kwargs)
            except BrokenProcessPool as broken:
                log.warning("the process pool is broken (%s): starting a new one", broken)
                self._pool.shutdown(wait=False, cancel_futures=True)
                self._pool = self._start()
                return self._pool.submit(fn, *args, **kwargs)

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        with self._lock:
            self._pool.shutdown(wait=wait, cancel_futures=cancel_futures)


def init_pool_worker(parent_pid: int, device: str) -> None:
    """The initializer of every pool process: die with `parent_pid`, then set torch up (`init_worker`)."""
    die_with_parent(parent_pid, signal.SIGKILL)
    # A terminal's Ctrl-C reaches the whole process group: the parent drains and shuts the pool down, so a
    # worker must not die of it mid-task (with a traceback of its own).
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    from workers.learning.training import init_worker  # torch: imported in the workers, not in their parent

    init_worker(device)


@contextlib.contextmanager
def process_pool(workers: int, device: str = "cpu") -> Iterator[ProcessPool]:
    """`device` ("cpu", "cuda", "cuda:N") is where the workers train and evaluate."""
    executor = ProcessPool(workers, device)
    try:
        yield executor
    finally:
        executor.shutdown(wait=True, cancel_futures=True)


def warm_up(executor: Executor, workers: int) -> None:
    """Start every worker now (a spawn and an import of torch and Opacus: seconds each) rather than on the first
    training, so that a client is ready when it registers and round 1 does not pay for start-up. It blocks:
    async callers run it in a thread, so their connections keep their heartbeats meanwhile."""
    # Submitted together, so none finds an idle worker and each spawns its own (Python spawns on demand).
    for future in [executor.submit(os.getpid) for _ in range(workers)]:
        future.result()
