"""Federated against centralized DP training: same model, data, epsilon and optimizer settings.

The centralized baseline is one "client" holding every sample: `train_local` for one epoch at a time from
the previous epoch's weights, its noise calibrated by the same `plan_privacy` over the same number of epochs
as the federation has rounds, evaluated after every epoch. It runs in one pool worker (one torch thread).
"""

from __future__ import annotations

import dataclasses
import time
from concurrent.futures import Executor
from pathlib import Path

import numpy as np

from benchmarks.federation import FederatedResult, bench_config, federate
from fedbus.data import Simulation
from workers.learning.local_round import LocalTrainConfig
from workers.learning.privacy import plan_privacy
from workers.learning.training import evaluate, initial_weights, train_local

MODEL = "mnist_dp_cnn"
MNIST_TRAIN = 60_000


def train_centralized(
    *,
    samples: int,
    epochs: int,
    epsilon: float | None,
    data_dir: str | None,
    eval_limit: int | None,
    batch_size: int = 128,
    lr: float = 0.5,
    momentum: float = 0.5,
    max_grad_norm: float = 1.0,
    accountant: str = "rdp",
) -> list[tuple[float, float, float | None]]:
    """(seconds since start, test accuracy, epsilon spent) after each epoch; runs in a pool worker."""
    started = time.perf_counter()
    request = Simulation.centralized(limit=samples, dataset_dir=Path(data_dir) if data_dir else None)
    plan = None
    if epsilon is not None:
        plan = plan_privacy(
            target_epsilon=epsilon, delta=1e-5, num_samples=samples, batch_size=batch_size, epochs_per_round=1,
            rounds=epochs, accountant=accountant,
        )  # fmt: skip
    config = LocalTrainConfig(
        task=MODEL, batch_size=batch_size, lr=lr, momentum=momentum, dp=plan is not None,
        max_grad_norm=max_grad_norm, noise_multiplier=plan.noise_multiplier if plan else None, accountant=accountant,
    )  # fmt: skip
    weights = initial_weights(MODEL, seed=0)
    ledger: dict[str, object] | None = None
    curve: list[tuple[float, float, float | None]] = []
    for epoch in range(epochs):
        result = train_local(weights, request, dataclasses.replace(config, seed=epoch), ledger)
        weights = {k: np.add(weights[k], result.delta[k], dtype=np.float32) for k in weights}
        ledger = result.ledger
        metrics = evaluate(weights, task=MODEL, data_dir=data_dir, limit=eval_limit)
        curve.append((time.perf_counter() - started, metrics["accuracy"], result.epsilon))
    return curve


def run(
    executor: Executor,
    *,
    data_dir: str | None,
    clients: int,
    rounds: int,
    train_limit: int | None,
    eval_limit: int | None,
    epsilon: float,
    workers: int,
    federated: FederatedResult | None = None,
) -> list[str]:
    """The comparison table; `federated` reuses the privacy sweep's IID run at the same settings when given."""
    if federated is None:
        config = bench_config(
            clients=clients, rounds=rounds, train_limit=train_limit, eval_limit=eval_limit, epsilon=epsilon
        )
        federated = federate(config, executor, data_dir=data_dir)
    samples = train_limit or MNIST_TRAIN
    curve = executor.submit(
        train_centralized,
        samples=samples,
        epochs=rounds,
        epsilon=epsilon,
        data_dir=data_dir,
        eval_limit=eval_limit,
    ).result()
    fed = [(row.elapsed_s, row.accuracy, row.epsilon) for row in federated.rows]
    level = min(fed[-1][1], curve[-1][1]) if fed and curve else 0.0
    lines = [
        f"`mnist_dp_cnn` on the same {samples:,} MNIST training samples at epsilon = {epsilon:g}, delta = 1e-5, "
        f"batch 128, lr 0.5, momentum 0.5, clip 1.0: {clients} federated clients for {rounds} rounds of one local "
        f"epoch (int8 updates, the IID run of the sweep above) against one centralized DP-SGD model for {rounds} "
        "epochs over all the samples. Time is wall clock from the start (noise calibration included); the "
        f"federation trains in {workers} pool processes, the centralized model in one.",
        "",
        f"| training | final accuracy | epsilon spent | epochs / rounds | time to {level:.1%} | total time |",
        "|---|---|---|---|---|---|",
        _row(f"federated, {clients} clients", fed, level),
        _row("centralized", curve, level),
    ]
    if fed and curve:
        gap = curve[-1][1] - fed[-1][1]
        per_client = samples // clients
        if gap >= 0:
            why = (
                f"Each federated client calibrates its noise for its own ~{per_client:,} records (sampling rate "
                f"{min(1.0, 128 / per_client):.3f} per step) where the centralized model does so for {samples:,} "
                f"({min(1.0, 128 / samples):.4f}): record-level DP costs more per client the fewer records a client "
                "holds, so the gap narrows as the data per client grows."
            )
        else:
            why = (
                "Here the federation ends above the centralized model at the same batch, learning rate and epochs, "
                "settings chosen for the federated clients: batch 128 is small for one DP-SGD model over all the "
                "records (each step's noise is large against its gradient), while FedAvg's average of "
                f"{clients} clients' updates acts like a {clients}x larger batch. Equal settings, neither side tuned "
                "for itself: `python -m benchmarks.dp_sweep` (docs/full/dp_sweep.md) tunes both with the same trial "
                "budget."
            )
        lines += ["", f"Centralized minus federated final accuracy: **{gap * 100:+.1f} points**. {why}"]
    return lines


def _row(name: str, curve: list[tuple[float, float, float | None]], level: float) -> str:
    if not curve:
        return f"| {name} | - | - | 0 | - | - |"
    at = next((t for t, accuracy, _ in curve if accuracy >= level), None)
    spent = curve[-1][2]
    eps = f"{spent:.2f}" if spent is not None else "-"
    to_level = f"{at:.1f} s" if at is not None else "not reached"
    return f"| {name} | {curve[-1][1]:.2%} | {eps} | {len(curve)} | {to_level} | {curve[-1][0]:.1f} s |"
