"""Strategies side by side: FedAvg, FedAvgM, FedAdam, FedYogi and FedProx on IID and Dirichlet labels.

For each strategy and partition: the rounds to a target accuracy without DP, and the final accuracy with
record-level DP-SGD at each client. The clients' settings are the same for every strategy (the privacy
section's: batch 128, lr 0.5, momentum 0.5, one local epoch, int8 updates); each strategy's own knob is
chosen first from a grid of three on IID data without DP (the fewest rounds to the target, then the best
final accuracy), the same tuning effort for each. FedAvg has no knob: its server step is the mean.
"""

from __future__ import annotations

from collections.abc import Sequence
from concurrent.futures import Executor
from dataclasses import dataclass
from pathlib import Path

from benchmarks import plots
from benchmarks.federation import FederatedResult, bench_config, data_scope, federate, partition_label, reached
from benchmarks.progress import say
from contracts.config import RunConfig
from contracts.strategy import FEDADAM, FEDAVG, FEDAVGM, FEDPROX, FEDYOGI, StrategyConfig

# name -> (strategy, the option tuned, its grid); the other options keep the registry's defaults.
GRIDS: dict[str, tuple[str, str | None, tuple[float, ...]]] = {
    "FedAvg": (FEDAVG, None, ()),
    "FedAvgM": (FEDAVGM, "server_lr", (0.1, 0.3, 1.0)),  # momentum 0.9 (Hsu et al. 2019): effective lr 1, 3, 10
    "FedAdam": (FEDADAM, "server_lr", (0.003, 0.01, 0.03)),  # Reddi et al. 2021's range for a CNN
    "FedYogi": (FEDYOGI, "server_lr", (0.003, 0.01, 0.03)),
    "FedProx": (FEDPROX, "mu", (0.001, 0.01, 0.1)),  # Li et al. 2020's grid
}


@dataclass(frozen=True, slots=True, kw_only=True)
class Cell:
    """One strategy on one partition: the run without DP (to the target) and the one with DP."""

    no_dp: FederatedResult
    dp: FederatedResult


def _strategy(name: str, value: float | None) -> StrategyConfig:
    strategy, option, _grid = GRIDS[name]
    return StrategyConfig(name=strategy, options={} if option is None or value is None else {option: value})


def _describe(name: str, value: float | None) -> str:
    option = GRIDS[name][1]
    return name if option is None or value is None else f"{name} ({option} {value:g})"


def _score(result: FederatedResult, target: float) -> tuple[int, float]:
    """Lower is better: the rounds to the target (a miss counts one past the last round), then -final accuracy."""
    hit = reached(result.rows, target)
    final = result.rows[-1].accuracy if result.rows else 0.0
    return (hit.round if hit else len(result.rows) + 1), -final


def run(
    executor: Executor,
    *,
    data_dir: str | None,
    clients: int,
    rounds: int,
    dp_rounds: int,
    target: float,
    epsilon: float,
    train_limit: int | None,
    eval_limit: int | None,
    partitions: Sequence[str],
    plot: Path,
) -> list[str]:
    """Tune each strategy's knob, then run every (strategy, partition) without DP and with DP; the tables."""

    def config(partition: str, strategy: StrategyConfig, dp: bool) -> RunConfig:
        return bench_config(
            clients=clients, rounds=dp_rounds if dp else rounds, train_limit=train_limit, eval_limit=eval_limit,
            epsilon=epsilon if dp else None, partition=partition, target_accuracy=None if dp else target,
            strategy=strategy,
        )  # fmt: skip

    tuned: dict[str, float | None] = {}
    tuning: list[str] = []
    for name, (_strategy_name, option, grid) in GRIDS.items():
        if option is None:
            tuned[name] = None
            continue
        scores = {}
        for value in grid:
            result = federate(config("iid", _strategy(name, value), dp=False), executor, data_dir=data_dir)
            scores[value] = _score(result, target)
            say(f"strategies: tuning {_describe(name, value)}, IID: {_progress(result, target)}")
        tuned[name] = min(grid, key=lambda v: scores[v])
        tried = ", ".join(f"{v:g}: {_rounds(r, rounds)} rounds, {-a:.2%}" for v, (r, a) in scores.items())
        tuning.append(f"- {name}, {option}: {tried} -> **{tuned[name]:g}**")

    cells: dict[tuple[str, str], Cell] = {}
    for partition in partitions:
        for name in GRIDS:
            strategy = _strategy(name, tuned[name])
            where = f"{_describe(name, tuned[name])}, {partition_label(partition)}"
            no_dp = federate(config(partition, strategy, dp=False), executor, data_dir=data_dir)
            say(f"strategies: {where}, no DP: {_progress(no_dp, target)}")
            dp = federate(config(partition, strategy, dp=True), executor, data_dir=data_dir)
            say(f"strategies: {where}, DP epsilon {epsilon:g}: {_progress(dp, None)}")
            cells[(name, partition)] = Cell(no_dp=no_dp, dp=dp)

    samples, tests = data_scope(train_limit, eval_limit)
    labels = [partition_label(p) for p in partitions]
    lines = [
        f"`mnist_dp_cnn`, {clients} clients sharing {samples} MNIST training samples, every client in every round, "
        "the same client settings for every strategy (batch 128, lr 0.5, momentum 0.5, one local epoch, int8 "
        f"updates); test accuracy on {tests} test samples. Without DP a run stops at {target:.0%} or after "
        f"{rounds} rounds; with DP it runs {dp_rounds} rounds at record-level epsilon {epsilon:g} per client "
        "(delta 1e-5, RDP). FedProx's proximal term is applied by fedbus inside each client's local training.",
        "",
        f"Each strategy's knob was tuned first, from three values, on IID data without DP (rounds to {target:.0%}, "
        "then final accuracy); the other options are the registry's defaults (FedAvgM momentum 0.9; FedAdam and "
        "FedYogi beta1 0.9, beta2 0.99, tau 1e-3, bias correction on):",
        "",
        *tuning,
        "",
        f"| strategy | {' | '.join(f'rounds to {target:.0%}, {label}' for label in labels)} "
        f"| {' | '.join(f'DP final, {label}' for label in labels)} |",
        "|---|" + "---|" * (2 * len(partitions)),
    ]
    for name in GRIDS:
        row = [cells[(name, p)] for p in partitions]
        to_target = [_reached(c.no_dp, target) for c in row]
        finals = [f"{c.dp.rows[-1].accuracy:.2%}" if c.dp.rows else "-" for c in row]
        lines.append(f"| {_describe(name, tuned[name])} | {' | '.join(to_target)} | {' | '.join(finals)} |")
    rounds_panel = {
        partition_label(p): {n: _rounds_or_none(cells[(n, p)].no_dp, target) for n in GRIDS} for p in partitions
    }
    dp_panel = {
        partition_label(p): {n: (cells[(n, p)].dp.rows[-1].accuracy if cells[(n, p)].dp.rows else None) for n in GRIDS}
        for p in partitions
    }
    subset = f"{train_limit:,} samples" if train_limit else "full MNIST"
    plots.grouped_bars(
        plot,
        {f"rounds to {target:.0%}, no DP (lower is better)": rounds_panel, f"final accuracy, DP epsilon {epsilon:g}":
         dp_panel},
        f"mnist_dp_cnn, {clients} clients, {subset}: strategies",
        missing=f"not in {rounds}",
    )  # fmt: skip
    lines += ["", f"![rounds to target and DP accuracy per strategy]({plot.name})"]
    return lines


def _progress(result: FederatedResult, target: float | None) -> str:
    final = f"final {result.rows[-1].accuracy:.2%}" if result.rows else "no round"
    hit = reached(result.rows, target) if target is not None else None
    to_target = f"{target:.0%} in round {hit.round}, " if hit and target is not None else ""
    return f"{to_target}{final} after {len(result.rows)} rounds ({result.wall_s:.0f} s)"


def _rounds(rounds: int, limit: int) -> str:
    return str(rounds) if rounds <= limit else f">{limit}"


def _reached(result: FederatedResult, target: float) -> str:
    hit = reached(result.rows, target)
    best = max((row.accuracy for row in result.rows), default=0.0)
    return str(hit.round) if hit else f"not in {len(result.rows)} ({best:.1%})"


def _rounds_or_none(result: FederatedResult, target: float) -> float | None:
    hit = reached(result.rows, target)
    return float(hit.round) if hit else None
