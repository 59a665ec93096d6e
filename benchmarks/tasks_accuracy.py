"""A built-in task besides MNIST: `fashion_mnist_cnn` federated over 10 IID clients, with DP and without.

The model is Papernot et al.'s tanh CNN (26,010 parameters; 86.1% at epsilon 2.7 trained centrally with
DP-SGD); each client holds a tenth of Fashion-MNIST's training split and accounts for its own records, so
its noise is calibrated for ~6,000 records rather than 60,000. The settings below were tuned for this task
on this page's machine (see `TUNING`); the run is the product's `federate`, like every other section.
"""

from __future__ import annotations

import dataclasses
import statistics
from collections.abc import Sequence
from concurrent.futures import Executor
from dataclasses import dataclass
from pathlib import Path

from benchmarks import plots
from benchmarks.federation import FederatedResult, bench_config, data_scope, federate
from contracts.catalog import FASHION_MNIST, FASHION_MNIST_CNN
from fedbus.errors import DataUnavailable
from workers.learning.datasets import load_dataset

TASK = FASHION_MNIST_CNN
AIM = 0.85  # issue 11's aim for epsilon <= 3


@dataclass(frozen=True, slots=True, kw_only=True)
class Settings:
    """Each client's local DP-SGD: expected batch (Poisson sampling), SGD lr and momentum, per-sample clip."""

    batch: int = 512
    lr: float = 2.0
    momentum: float = 0.5
    clip: float = 1.0
    local_epochs: int = 1


SETTINGS = Settings()
# The no-DP reference: bench_config's MNIST settings. At SETTINGS without clipping or noise (lr 2 on raw
# gradients) it was unstable in its first rounds and ended at 83.25% after 20 (2026-12-03, this machine).
NO_DP_SETTINGS = Settings(batch=128, lr=0.5, momentum=0.5)
TUNING = (
    "How these settings were chosen (tuning runs on this machine, 2026-12-03, through the same `federate`, all "
    "at epsilon 3 on all the data, one run per setting at seed 0, the default; differences under a point may be "
    "noise). 5-round probes of batch 128-512, lr 0.5-8, momentum 0.5 or 0.9 and clip 0.5 or 1 all ended at "
    "75-76% (clip 0.5 with lr 2 matched clip 1 with lr 1: the step goes with lr x clip; lr 8 was the "
    "worst). 20 rounds: "
    "batch 512 with lr 1 / 2 / 3 gave 79.8% / **81.4%** (kept) / 80.4%, batch 256 with lr 1 / 1.5 gave "
    "80.8% / 80.0%, batch 1024 with lr 4 gave 80.8%; 10 rounds of 2 local epochs (batch 512, lr 2) gave 81.1%. "
    "40 rounds (batch 512, lr 2) gave 80.7%, flat near 80% from round 28: the budget spread over twice the "
    "steps puts more noise in each. None reached the 85% aimed at. What holds it back: each client calibrates "
    "its noise for its own ~6,000 records, and averaging 10 clients divides the noise's standard deviation by "
    "only the square root of 10. One party holding all 60,000 records with the same noise multiplier and "
    "sampling rate (1 client, batch 5,120, lr 2, 20 epochs; a tuning run, not re-run here) reached 83.7%; "
    "Papernot et al.'s 86.1% at epsilon 2.7 is centralized too, with its own schedule of batch and epochs. "
    "A GPU sweep (docs/cuda/benchmarks.md, 2026-12-04) added server optimizers and the PRV accountant: FedAvgM "
    "(momentum 0.7 or 0.9), FedAdam and FedYogi all ended lower (76.5-80.8%); PRV gave about half a point more "
    "than RDP at these settings, 81.8% at best (30 rounds). Not tried: a learning-rate schedule, other seeds."
)


def run(
    executor: Executor,
    *,
    data_dir: str | None,
    clients: int,
    rounds: int,
    train_limit: int | None,
    eval_limit: int | None,
    epsilons: Sequence[float | None],
    plot: Path,
    settings: Settings = SETTINGS,
    no_dp: Settings = NO_DP_SETTINGS,
) -> list[str]:
    """Each epsilon (None: no DP) for `rounds` rounds; the table, a sentence on the settings, the plot."""
    try:
        load_dataset(FASHION_MNIST, train=False, data_dir=data_dir)
    except (DataUnavailable, OSError) as exc:
        return [f"Not measured: Fashion-MNIST is not available here ({type(exc).__name__}: {exc})."]
    results: dict[float | None, FederatedResult] = {}
    for epsilon in epsilons:
        local = no_dp if epsilon is None else settings
        config = bench_config(
            clients=clients, rounds=rounds, train_limit=train_limit, eval_limit=eval_limit, epsilon=epsilon,
            batch_size=local.batch, task=TASK,
        )  # fmt: skip
        config = dataclasses.replace(
            config,
            privacy=dataclasses.replace(config.privacy, max_grad_norm=local.clip),
            round=dataclasses.replace(
                config.round, lr=local.lr, momentum=local.momentum, local_epochs=local.local_epochs
            ),
        )
        results[epsilon] = federate(config, executor, data_dir=data_dir)
    samples, tests = data_scope(train_limit, eval_limit)
    rounds_word = "round" if rounds == 1 else "rounds"
    epochs = "one local epoch" if settings.local_epochs == 1 else f"{settings.local_epochs} local epochs"
    lines = [
        f"`{TASK}` (Papernot et al.'s tanh CNN, 26,010 parameters), {clients} clients sharing {samples} "
        f"Fashion-MNIST training samples (IID), {rounds} {rounds_word} of {epochs} (expected batch {settings.batch}, "
        f"lr {settings.lr:g}, momentum {settings.momentum:g}, clip {settings.clip:g}, int8 updates, every client "
        f"in every round); test accuracy on {tests} test samples. Epsilon is each client's record-level budget at "
        "delta = 1e-5 over the planned rounds (RDP accountant); the noise is calibrated so the last round spends "
        "it. Final accuracy is the last round's, not the best round's.",
    ]
    if None in results:
        lines += [
            "",
            f"The no-DP reference trains without clipping or noise at batch {no_dp.batch}, lr {no_dp.lr:g}, "
            f"momentum {no_dp.momentum:g} (the MNIST sections' settings): at the DP settings (lr {settings.lr:g} "
            "on unclipped gradients) it was unstable in its first rounds and ended at 83.25% after 20 (a run of "
            "2026-12-03 on this machine).",
        ]
    lines += [
        "",
        "| epsilon | final accuracy | best round | epsilon spent | rounds | time per round (median) | wall time |",
        "|---|---|---|---|---|---|---|",
    ]
    for epsilon, result in results.items():
        lines.append(_row(_label(epsilon, no_dp) if epsilon is None else f"{epsilon:g}", result))
    dp = [(e, r.rows[-1].accuracy) for e, r in results.items() if e is not None and e <= 3 and r.rows]
    if dp:
        epsilon, accuracy = max(dp, key=lambda point: point[0])
        verdict = "meets" if accuracy >= AIM else "falls short of"
        lines += [
            "",
            f"At epsilon = {epsilon:g} the federation ends at **{accuracy:.2%}**, which {verdict} the {AIM:.0%} "
            "aimed at (issue 11).",
        ]
    if TUNING:
        lines += ["", TUNING]
    curves = {_label(e, no_dp): [(row.round, row.accuracy) for row in r.rows] for e, r in results.items() if r.rows}
    if curves:
        subset = f"{train_limit:,} samples" if train_limit else "full Fashion-MNIST"
        plots.accuracy_per_round(plot, curves, AIM, f"{TASK}, {clients} clients, {subset}")
        lines += ["", f"![Fashion-MNIST accuracy per round]({plot.name})"]
    return lines


def _label(epsilon: float | None, no_dp: Settings) -> str:
    return f"no DP (batch {no_dp.batch}, lr {no_dp.lr:g})" if epsilon is None else f"epsilon {epsilon:g}"


def _row(target: str, result: FederatedResult) -> str:
    rows = result.rows
    if not rows:
        return f"| {target} | - | - | - | 0 | - | {result.wall_s:.1f} s ({result.reason}) |"
    last = rows[-1]
    best = max(rows, key=lambda row: row.accuracy)
    spent = f"{last.epsilon:.2f}" if last.epsilon is not None else "-"
    median = statistics.median(row.duration_s for row in rows)
    return (
        f"| {target} | {last.accuracy:.2%} | {best.accuracy:.2%} (round {best.round}) | {spent} | {len(rows)} "
        f"| {median:.1f} s | {result.wall_s:.1f} s |"
    )
