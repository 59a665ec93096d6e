"""Privacy against utility: final MNIST test accuracy for a sweep of epsilons, IID and Dirichlet(0.5)."""

from __future__ import annotations

from collections.abc import Sequence
from concurrent.futures import Executor
from dataclasses import dataclass
from pathlib import Path

from benchmarks import plots
from benchmarks.federation import FederatedResult, bench_config, data_scope, federate, partition_label


@dataclass(frozen=True, slots=True, kw_only=True)
class Sweep:
    """What the sweep measured: each (partition, epsilon) run; epsilon None is the no-DP run."""

    results: dict[tuple[str, float | None], FederatedResult]


def run(
    executor: Executor,
    *,
    data_dir: str | None,
    clients: int,
    rounds: int,
    train_limit: int | None,
    eval_limit: int | None,
    epsilons: Sequence[float | None],
    partitions: Sequence[str],
    plot: Path,
) -> tuple[list[str], Sweep]:
    """Run every (partition, epsilon) to its last round; the table, the plot, and the runs for reuse."""
    results: dict[tuple[str, float | None], FederatedResult] = {}
    for partition in partitions:
        for epsilon in epsilons:
            config = bench_config(
                clients=clients,
                rounds=rounds,
                train_limit=train_limit,
                eval_limit=eval_limit,
                epsilon=epsilon,
                partition=partition,
            )
            results[(partition, epsilon)] = federate(config, executor, data_dir=data_dir)
    samples, tests = data_scope(train_limit, eval_limit)
    lines = [
        f"`mnist_dp_cnn`, {clients} clients sharing {samples} MNIST training samples, {rounds} rounds of one local "
        f"epoch (batch 128, lr 0.5, momentum 0.5, clip 1.0, int8 updates, every client in every round); test "
        f"accuracy on {tests} test samples. Epsilon is each client's record-level budget at delta = 1e-5 over the "
        "planned rounds (RDP accountant); the noise is calibrated so the last round spends it.",
        "",
        "| partition | epsilon | final accuracy | epsilon spent | rounds | wall time |",
        "|---|---|---|---|---|---|",
    ]
    for (partition, epsilon), result in results.items():
        last = result.rows[-1] if result.rows else None
        spent = f"{last.epsilon:.2f}" if last and last.epsilon is not None else "-"
        accuracy = f"{last.accuracy:.2%}" if last else "-"
        target = "no DP" if epsilon is None else f"{epsilon:g}"
        label = partition_label(partition)
        lines.append(f"| {label} | {target} | {accuracy} | {spent} | {len(result.rows)} | {result.wall_s:.1f} s |")
    curves = {
        partition_label(p): [
            (e, r.rows[-1].accuracy) for (q, e), r in results.items() if q == p and e is not None and r.rows
        ]
        for p in partitions
    }
    no_dp = {partition_label(q): r.rows[-1].accuracy for (q, e), r in results.items() if e is None and r.rows}
    subset = f"{train_limit:,} samples" if train_limit else "full MNIST"
    plots.privacy_utility(plot, curves, no_dp, f"mnist_dp_cnn, {clients} clients, {rounds} rounds, {subset}")
    if train_limit:
        lines += [
            "",
            f"On this subset each client holds only ~{train_limit // clients:,} records for {rounds} rounds, which "
            "caps DP accuracy well below the full-data figures ([full/benchmarks.md](full/benchmarks.md), "
            "`--profile full`: all 60,000 samples, 15 rounds).",
        ]
    lines += ["", f"![accuracy against epsilon]({plot.name})"]
    return lines, Sweep(results=results)
