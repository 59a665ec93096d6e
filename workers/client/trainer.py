"""Runs the learning code off the event loop: in a process pool, one torch thread per process.

The client's own process never imports torch or Opacus (it registers, follows its queue and uploads): what
needs them (loading the task and data, training, the privacy accountant's curves) runs in the pool, through
the top-level functions below, which import the learning code there.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping
from concurrent.futures import Executor
from functools import partial
from typing import TYPE_CHECKING, Any, TypeVar

from contracts.tensors import TensorMapping
from fedbus.data import DataRequest
from workers.learning.local_round import LocalTrainConfig, LocalTrainResult

if TYPE_CHECKING:
    from workers.learning.privacy import PrivacyPlan

T = TypeVar("T")


class PoolTrainer:
    def __init__(self, executor: Executor | None) -> None:
        self._executor = executor

    async def prepare(self, task: str, request: DataRequest, *, private: bool) -> int:
        """The client's number of training samples, once the task and its data are checked (TaskError,
        DataUnavailable)."""
        return await self._run(partial(_prepare, task, request, private=private))

    async def train(
        self, base: TensorMapping, request: DataRequest, config: LocalTrainConfig, ledger: dict[str, object] | None
    ) -> LocalTrainResult:
        return await self._run(partial(_train, dict(base), request, config, ledger))

    async def plan_privacy(self, **plan: Any) -> PrivacyPlan:
        """`workers.learning.privacy.plan_privacy` (noise calibration: CPU work) in the pool."""
        return await self._run(partial(_plan_privacy, **plan))

    async def epsilon_after(
        self, ledger: Mapping[str, Any] | None, accountant: str, noise: float, rate: float, steps: int, delta: float
    ) -> float:
        """The epsilon of `ledger` (a fresh one of `accountant` when None) after `steps` more steps."""
        return await self._run(partial(_epsilon_after, ledger, accountant, noise, rate, steps, delta))

    async def _run(self, call: Callable[[], T]) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._executor, call)


def _prepare(task: str, request: DataRequest, *, private: bool) -> int:
    from workers.learning.training import prepare

    return prepare(task, request, private=private)


def _train(
    base: dict[str, Any], request: DataRequest, config: LocalTrainConfig, ledger: dict[str, object] | None
) -> LocalTrainResult:
    from workers.learning.training import train_local

    return train_local(base, request, config, ledger)


def _plan_privacy(**plan: Any) -> PrivacyPlan:
    from workers.learning.privacy import plan_privacy

    return plan_privacy(**plan)


def _epsilon_after(
    ledger: Mapping[str, Any] | None, accountant: str, noise: float, rate: float, steps: int, delta: float
) -> float:
    from workers.learning.privacy import PrivacyLedger

    current = PrivacyLedger.from_dict(ledger) if ledger else PrivacyLedger(accountant)
    return current.epsilon_after(noise, rate, steps, delta)
