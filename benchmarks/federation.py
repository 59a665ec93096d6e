"""A federated run for the benchmarks: `services.embedded.federate` on a shared process pool.

The benchmarks run many short trainings back to back, so the pool is passed in and shared (its workers keep
MNIST loaded); `trainer_for` and `transport_for` let the latency benchmark slow clients and links down.
Everything else is the product's code: gRPC on loopback, a SQLite log, the in-memory broker, the relay and
the coordinator's ticks.
"""

from __future__ import annotations

import asyncio
import tempfile
import time
from concurrent.futures import Executor
from dataclasses import dataclass
from pathlib import Path

from contracts.capability import PlansConfig
from contracts.catalog import MNIST_DP_CNN
from contracts.config import PrivacyConfig, RoundConfig, RunConfig
from contracts.run_state import RoundSummary
from contracts.strategy import StrategyConfig
from services.cli.report import round_rows
from services.embedded import TrainerFactory, TransportFactory, plain_transport, pool_trainer
from services.embedded import federate as embedded_federate


@dataclass(frozen=True, slots=True, kw_only=True)
class FederatedResult:
    """Per-round rows of one run, why it stopped, and its wall time from start to RunCompleted."""

    rows: list[RoundSummary]
    reason: str
    wall_s: float


def bench_config(
    *,
    clients: int,
    rounds: int,
    train_limit: int | None,
    eval_limit: int | None,
    epsilon: float | None = 3.0,
    partition: str = "iid",
    compression: str = "int8",
    quorum: float = 1.0,
    target_accuracy: float | None = None,
    batch_size: int = 128,
    task: str = MNIST_DP_CNN,
    lr: float = 0.5,
    momentum: float = 0.5,
    local_epochs: int = 1,
    max_grad_norm: float = 1.0,
    accountant: str = "rdp",
    strategy: StrategyConfig | None = None,
    plans: PlansConfig | None = None,
) -> RunConfig:
    """`task` (mnist_dp_cnn unless named), by default with the first version's DP-SGD settings for it (batch 128,
    lr 0.5, momentum 0.5, clip 1.0, RDP, FedAvg); epsilon None: no DP."""
    privacy = PrivacyConfig(
        enabled=epsilon is not None,
        epsilon=epsilon or 3.0,
        delta=1e-5,
        max_grad_norm=max_grad_norm,
        accountant=accountant,
    )
    return RunConfig(
        task=task,
        clients=clients,
        rounds=rounds,
        partition=partition,
        compression=compression,
        train_limit=train_limit,
        eval_limit=eval_limit,
        target_accuracy=target_accuracy,
        privacy=privacy,
        round=RoundConfig(
            quorum=quorum,
            grace_s=0.0,
            timeout_s=900.0,
            batch_size=batch_size,
            lr=lr,
            momentum=momentum,
            local_epochs=local_epochs,
        ),
        strategy=strategy or StrategyConfig(),
        plans=plans or PlansConfig(),
    )


def partition_label(partition: str) -> str:
    """How a page names a partition: "IID", "Dirichlet(0.5)", ..."""
    return "IID" if partition == "iid" else partition.replace("dirichlet:", "Dirichlet(") + ")"


def data_scope(train_limit: int | None, eval_limit: int | None) -> tuple[str, str]:
    """How a page names the MNIST training and test samples a run used: ("the first 6,000", "all 10,000")."""
    samples = f"the first {train_limit:,}" if train_limit else "all 60,000"
    tests = f"the first {eval_limit:,}" if eval_limit else "all 10,000"
    return samples, tests


def reached(rows: list[RoundSummary], target: float) -> RoundSummary | None:
    """The first round whose test accuracy is at least `target`."""
    return next((row for row in rows if row.accuracy >= target), None)


def federate(
    config: RunConfig,
    executor: Executor,
    *,
    data_dir: str | None,
    trainer_for: TrainerFactory = pool_trainer,
    transport_for: TransportFactory = plain_transport,
) -> FederatedResult:
    """Run one federated training to completion in a temporary folder and return its rounds."""
    with tempfile.TemporaryDirectory(prefix="fedbus-bench-") as folder:
        started = time.perf_counter()
        result = asyncio.run(
            embedded_federate(
                config, Path(folder), executor, data_dir=data_dir, trainer_for=trainer_for, transport_for=transport_for
            )
        )
        return FederatedResult(
            rows=round_rows(result.events), reason=result.reason, wall_s=time.perf_counter() - started
        )
