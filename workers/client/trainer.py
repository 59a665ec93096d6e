"""Runs the learning code off the event loop: in a process pool, one torch thread per process."""

from __future__ import annotations

import asyncio
from concurrent.futures import Executor
from functools import partial

from contracts.tensors import TensorMapping
from fedbus.data import DataRequest
from workers.learning.training import LocalTrainConfig, LocalTrainResult, prepare, train_local


class PoolTrainer:
    def __init__(self, executor: Executor | None) -> None:
        self._executor = executor

    async def prepare(self, task: str, request: DataRequest, *, private: bool) -> int:
        """The client's number of training samples, once the task and its data are checked (TaskError,
        DataUnavailable)."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, partial(prepare, task, request, private=private))

    async def train(
        self, base: TensorMapping, request: DataRequest, config: LocalTrainConfig, ledger: dict[str, object] | None
    ) -> LocalTrainResult:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, train_local, dict(base), request, config, ledger)
