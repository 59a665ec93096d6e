"""Model building and evaluation off the event loop, in the process pool."""

from __future__ import annotations

import asyncio
from concurrent.futures import Executor

from contracts.tensors import TensorDict, TensorMapping
from workers.learning.training import evaluate, initial_weights


class PoolEvaluator:
    def __init__(self, executor: Executor | None, data_dir: str | None) -> None:
        self._executor = executor
        self._data_dir = data_dir

    async def initial(self, model: str, seed: int) -> TensorDict:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, _initial, model, seed)

    async def evaluate(
        self, weights: TensorMapping, *, model: str, dataset: str, limit: int | None
    ) -> dict[str, float]:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(
            self._executor, _evaluate, dict(weights), model, dataset, self._data_dir, limit
        )


def _initial(model: str, seed: int) -> TensorDict:
    return initial_weights(model, seed=seed)


def _evaluate(
    weights: TensorDict, model: str, dataset: str, data_dir: str | None, limit: int | None
) -> dict[str, float]:
    return evaluate(weights, model=model, dataset=dataset, data_dir=data_dir, limit=limit)
