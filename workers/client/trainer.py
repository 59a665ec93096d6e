"""Runs the learning code off the event loop: in a process pool, one torch thread per process."""

from __future__ import annotations

import asyncio
from concurrent.futures import Executor

import numpy as np

from contracts.tensors import TensorMapping
from workers.learning.datasets import load_dataset
from workers.learning.partition import partition
from workers.learning.training import LocalTrainConfig, LocalTrainResult, train_local


def partition_indices(
    dataset: str, data_dir: str | None, *, scheme: str, count: int, index: int, seed: int, limit: int | None
) -> np.ndarray:
    """This client's sample indices: the same seeded split every client computes independently."""
    labels = load_dataset(dataset, train=True, data_dir=data_dir).labels.numpy()
    if limit is not None:
        labels = labels[:limit]
    return partition(labels, count, scheme, seed=seed)[index]


class PoolTrainer:
    def __init__(self, executor: Executor | None) -> None:
        self._executor = executor

    async def train(
        self, base: TensorMapping, indices: np.ndarray, config: LocalTrainConfig, ledger: dict[str, object] | None
    ) -> LocalTrainResult:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, train_local, dict(base), indices, config, ledger)
