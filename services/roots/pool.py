"""The training/evaluation process pool: spawned (never forked from a process running gRPC), one torch thread each."""

from __future__ import annotations

import contextlib
import multiprocessing
import os
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor

from workers.learning.training import init_worker


@contextlib.contextmanager
def process_pool(workers: int, device: str = "cpu") -> Iterator[ProcessPoolExecutor]:
    """`device` ("cpu", "cuda", "cuda:N") is where the workers train and evaluate."""
    executor = ProcessPoolExecutor(
        max_workers=workers,
        mp_context=multiprocessing.get_context("spawn"),
        initializer=init_worker,
        initargs=(device,),
    )
    try:
        yield executor
    finally:
        executor.shutdown(wait=True, cancel_futures=True)


def warm_up(executor: ProcessPoolExecutor, workers: int) -> None:
    """Start every worker now (a spawn and an import of torch and Opacus: seconds each) rather than on the first
    training, so that a client is ready when it registers and round 1 does not pay for start-up. It blocks:
    async callers run it in a thread, so their connections keep their heartbeats meanwhile."""
    # Submitted together, so none finds an idle worker and each spawns its own (Python spawns on demand).
    for future in [executor.submit(os.getpid) for _ in range(workers)]:
        future.result()
