"""Model building and central evaluation off the event loop, in the process pool."""

from __future__ import annotations

import asyncio
from concurrent.futures import Executor
from functools import partial

from contracts.tensors import TensorDict, TensorMapping
from workers.learning.training import check_weights, evaluate, initial_weights


class PoolEvaluator:
    def __init__(self, executor: Executor | None, data_dir: str | None) -> None:
        self._executor = executor
        self._data_dir = data_dir

    async def initial(self, task: str, seed: int) -> TensorDict:
        """The task's seeded initial weights (TaskError when it cannot be loaded here)."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, partial(initial_weights, task, seed=seed))

    async def check_fits(self, weights: TensorMapping, *, task: str) -> None:
        """ConfigError("weights", ...) unless `weights` load into the task's model (keys and shapes)."""
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(self._executor, partial(check_weights, dict(weights), task))

    async def evaluate(self, weights: TensorMapping, *, task: str, limit: int | None) -> dict[str, float]:
        """Central evaluation on the task's test data; empty when the task has none."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(
            self._executor, partial(evaluate, dict(weights), task=task, data_dir=self._data_dir, limit=limit)
        )
