"""User-level DP-FedAvg against epsilon: many simulated clients, each protected as a whole (all its records).

The aggregator clips each client's update to C, adds Gaussian noise of multiplier z to the sum and divides by
the expected cohort; C follows the median update norm (adaptive clipping, Andrew et al. 2021). For each
target epsilon the run's z is the smallest that keeps `rounds` rounds within it (the run's accountant, at
`DELTA`), so every run spends its budget by its last round. Clients train without record-level DP here, so
the table shows what user-level noise alone costs; both levels can be on together (docs/privacy.md).
"""

from __future__ import annotations

from collections.abc import Sequence
from concurrent.futures import Executor
from dataclasses import replace
from pathlib import Path

from benchmarks import plots
from benchmarks.federation import FederatedResult, bench_config, data_scope, federate
from benchmarks.progress import say
from contracts.config import RunConfig
from contracts.user_privacy import COUNT_NOISE_DIVISOR, UserPrivacyConfig
from workers.learning.privacy import derive_noise_multiplier

DELTA = 1e-5
ACCOUNTANT = "prv"
SAMPLE_RATE = 1.0  # every client every round: with few rounds, amplification by sampling buys less than it costs


def user_config(
    *, clients: int, rounds: int, epsilon: float | None, local_epochs: int, train_limit: int | None,
    eval_limit: int | None, clip_norm: float = 1.0, clip_lr: float = 1.0,
) -> tuple[RunConfig, float | None]:  # fmt: skip
    """The run at user-level `epsilon` (None: user-level DP off) and its noise multiplier z."""
    config = bench_config(
        clients=clients, rounds=rounds, train_limit=train_limit, eval_limit=eval_limit, epsilon=None,
        local_epochs=local_epochs, batch_size=64, accountant=ACCOUNTANT,
    )  # fmt: skip
    if epsilon is None:
        return config, None
    z = derive_noise_multiplier(
        target_epsilon=epsilon, delta=DELTA, sample_rate=SAMPLE_RATE, steps=rounds, accountant=ACCOUNTANT
    )
    # Andrew et al.'s count noise q*N/20 leaves the sum nothing once z >= 2 sigma_b; past that the count gets
    # sigma_b = z, a quarter of the budget's 1/z^2 (the sum's multiplier is then z / sqrt(3/4)).
    sigma_b = max(SAMPLE_RATE * clients / COUNT_NOISE_DIVISOR, z)
    user = UserPrivacyConfig(
        enabled=True, noise_multiplier=z, clip_norm=clip_norm, adaptive=True, target_quantile=0.5, clip_lr=clip_lr,
        clip_count_stddev=sigma_b, sample_rate=SAMPLE_RATE, delta=DELTA, epsilon=epsilon,
    )  # fmt: skip
    # The coordinator's norm bound (10x the model's norm) is for poisoned updates: the clip here bounds them.
    return replace(config, user_privacy=user, round=replace(config.round, max_update_norm_ratio=None)), z


def run(
    executor: Executor,
    *,
    data_dir: str | None,
    clients: int,
    rounds: int,
    local_epochs: int,
    epsilons: Sequence[float | None],
    train_limit: int | None,
    eval_limit: int | None,
    plot: Path,
) -> list[str]:
    """Every epsilon (None: no user-level DP) to its last round; the table and the plot."""
    results: dict[float | None, tuple[FederatedResult, float | None]] = {}
    for epsilon in epsilons:
        config, z = user_config(
            clients=clients, rounds=rounds, epsilon=epsilon, local_epochs=local_epochs, train_limit=train_limit,
            eval_limit=eval_limit,
        )  # fmt: skip
        result = federate(config, executor, data_dir=data_dir)
        results[epsilon] = (result, z)
        final = f"{result.rows[-1].accuracy:.2%}" if result.rows else "no round"
        level = "no user-level DP" if epsilon is None else f"user-level epsilon {epsilon:g}"
        say(f"user-level DP: {clients} clients, {level}: {final} ({result.wall_s:.0f} s)")
    samples, tests = data_scope(train_limit, eval_limit)
    per_client = (train_limit or 60_000) // clients
    lines = [
        f"`mnist_dp_cnn`, {clients} IID clients sharing {samples} MNIST training samples (~{per_client:,} each), "
        f"every client in every round (q = {SAMPLE_RATE:g}: the epsilon is the Gaussian mechanism's, unamplified), "
        f"{rounds} rounds of {local_epochs} local epochs (batch 64, lr 0.5, momentum 0.5, no record-level DP), "
        f"FedAvg; test accuracy on {tests} test samples. Epsilon is per client, all its records together, at "
        f"delta = {DELTA:g} ({ACCOUNTANT.upper()} accountant); adaptive clipping to the median update norm.",
        "",
        "| user-level epsilon | noise multiplier z | final accuracy | best round | epsilon spent | last clip C "
        "| wall time |",
        "|---|---|---|---|---|---|---|",
    ]
    for epsilon, (result, z) in results.items():
        last = result.rows[-1] if result.rows else None
        best = max((row.accuracy for row in result.rows), default=0.0)
        spent = f"{last.user_epsilon:.2f}" if last and last.user_epsilon is not None else "-"
        clip = f"{last.user_clip_norm:.3g}" if last and last.user_clip_norm is not None else "-"
        final = f"{last.accuracy:.2%}" if last else "-"
        target = "no user-level DP" if epsilon is None else f"{epsilon:g}"
        noise = "-" if z is None else f"{z:.2f}"
        lines.append(f"| {target} | {noise} | {final} | {best:.2%} | {spent} | {clip} | {result.wall_s:.0f} s |")
    label = "user-level DP-FedAvg"
    curves = {label: [(e, r.rows[-1].accuracy) for e, (r, _) in results.items() if e is not None and r.rows]}
    plain = [r.rows[-1].accuracy for e, (r, _) in results.items() if e is None and r.rows]
    no_dp = {label: plain[0]} if plain else {}
    subset = f"{train_limit:,} samples" if train_limit else "full MNIST"
    plots.privacy_utility(plot, curves, no_dp, f"mnist_dp_cnn, {clients} clients, {rounds} rounds, {subset}")
    lines += [
        "",
        f"The noise on the mean update is z*C/{clients} per coordinate against a signal of at most C: what "
        "user-level DP needs is clients, not records (McMahan et al. 2018 train with thousands per round).",
        "",
        f"![user-level accuracy against epsilon]({plot.name})",
    ]
    return lines
