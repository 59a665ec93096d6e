"""The training/evaluation process pool: spawned (never forked from a process running gRPC), one torch thread each."""

from __future__ import annotations

import contextlib
import multiprocessing
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
