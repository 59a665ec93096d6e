"""A seeded random search for DP-SGD settings on full MNIST: the federation and a centralized baseline, each
given the same budget (trials, and at most the same epochs of training per trial), at the same epsilon.

    python -m benchmarks.dp_sweep --trials 7 --epsilon 2 --out docs/full/dp_sweep.md

The federation is 10 IID clients (`benchmarks.federation.federate`: gRPC on loopback, the product's code),
record-level DP at each client, PRV accountant, int8 updates. Its search space is the client's batch, lr,
momentum and clip norm, the local epochs per round, the total epochs (rounds x local epochs) and the server
optimizer (FedAvg, or FedAvgM as a moving average of the rounds' updates). The centralized baseline is one
DP-SGD model on all 60,000 samples (`benchmarks.centralized.train_centralized`), searched over its batch, lr,
momentum, clip norm and epochs. Trial i of each side is drawn from `random.Random(seed + i)`, so a rerun with
the same arguments draws the same settings; the federated side also runs the demo's settings (`DEMO`, trial
"demo") as an anchor. The page lists every trial, best first, and a JSON file beside it keeps them;
`--resume JSON` reuses the trials an earlier run of the same sweep already measured (a trial takes minutes).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shlex
import sys
from collections.abc import Sequence
from concurrent.futures import Executor, Future
from dataclasses import asdict, dataclass, replace
from pathlib import Path

from benchmarks import plots
from benchmarks.centralized import MNIST_TRAIN, train_centralized
from benchmarks.federation import bench_config, federate
from benchmarks.machine import machine
from contracts.config import RunConfig
from contracts.strategy import FEDAVG, FEDAVGM, StrategyConfig
from services.roots.pool import process_pool, warm_up

CLIENTS = 10
ACCOUNTANT = "prv"
TOTAL_EPOCHS = (20, 30, 40)  # both sides: the cost of a trial is its epochs over all the data
LRS = (0.5, 1.0, 2.0, 4.0)
MOMENTA = (0.5, 0.9)
CLIPS = (0.5, 1.0)
CLIENT_BATCHES = (256, 512, 1024)  # of a client's 6,000 records
CENTRAL_BATCHES = (512, 1024, 2048, 4096)  # of 60,000
LOCAL_EPOCHS = (1, 2)
SERVER_MOMENTA = (0.0, 0.5, 0.8)  # 0: FedAvg; else FedAvgM with server_lr 1 - momentum (an average of rounds)


@dataclass(frozen=True, slots=True)
class Limits:
    """The first `train` training and `eval` test samples (None: all); the smoke test's small sweep."""

    train: int | None = None
    eval: int | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class FederatedTrial:
    batch_size: int
    lr: float
    momentum: float
    max_grad_norm: float
    local_epochs: int
    rounds: int
    server_momentum: float

    @classmethod
    def draw(cls, rng: random.Random, epochs: tuple[int, ...] = TOTAL_EPOCHS) -> FederatedTrial:
        local_epochs = rng.choice(LOCAL_EPOCHS)
        return cls(
            batch_size=rng.choice(CLIENT_BATCHES),
            lr=rng.choice(LRS),
            momentum=rng.choice(MOMENTA),
            max_grad_norm=rng.choice(CLIPS),
            local_epochs=local_epochs,
            rounds=max(1, rng.choice(epochs) // local_epochs),
            server_momentum=rng.choice(SERVER_MOMENTA),
        )

    @property
    def strategy(self) -> StrategyConfig:
        if not self.server_momentum:
            return StrategyConfig(name=FEDAVG)
        options = {"momentum": self.server_momentum, "server_lr": round(1.0 - self.server_momentum, 6)}
        return StrategyConfig(name=FEDAVGM, options=options)

    def config(self, *, epsilon: float | None, partition: str = "iid", limits: Limits | None = None) -> RunConfig:
        limits = limits or Limits()
        config = bench_config(
            clients=CLIENTS, rounds=self.rounds, train_limit=limits.train, eval_limit=limits.eval, epsilon=epsilon,
            partition=partition, batch_size=self.batch_size, lr=self.lr, momentum=self.momentum,
            local_epochs=self.local_epochs, max_grad_norm=self.max_grad_norm, accountant=ACCOUNTANT,
            strategy=self.strategy,
        )  # fmt: skip
        # A high lr over many noisy local steps moves the model far in one round, which is what the search is
        # for: the coordinator's poisoning bound (10x the model's norm) is for deployments, not for this sweep.
        return replace(config, round=replace(config.round, max_update_norm_ratio=None))

    def describe(self) -> str:
        server = "FedAvg" if not self.server_momentum else f"FedAvgM({self.server_momentum:g})"
        return (
            f"batch {self.batch_size}, lr {self.lr:g}, momentum {self.momentum:g}, clip {self.max_grad_norm:g}, "
            f"{self.rounds} rounds x {self.local_epochs} epoch(s), {server}"
        )


@dataclass(frozen=True, slots=True, kw_only=True)
class CentralizedTrial:
    batch_size: int
    lr: float
    momentum: float
    max_grad_norm: float
    epochs: int

    @classmethod
    def draw(cls, rng: random.Random, epochs: tuple[int, ...] = TOTAL_EPOCHS) -> CentralizedTrial:
        return cls(
            batch_size=rng.choice(CENTRAL_BATCHES),
            lr=rng.choice(LRS),
            momentum=rng.choice(MOMENTA),
            max_grad_norm=rng.choice(CLIPS),
            epochs=rng.choice(epochs),
        )

    def describe(self) -> str:
        return (
            f"batch {self.batch_size}, lr {self.lr:g}, momentum {self.momentum:g}, clip {self.max_grad_norm:g}, "
            f"{self.epochs} epochs"
        )


@dataclass(frozen=True, slots=True, kw_only=True)
class Outcome:
    """One trial's result: accuracy after each round or epoch, the epsilon spent, the wall time."""

    side: str  # federated | centralized
    trial: int
    settings: dict[str, object]
    described: str
    curve: list[float]
    epsilon: float | None
    wall_s: float
    stopped: str

    @property
    def final(self) -> float:
        return self.curve[-1] if self.curve else 0.0


# examples/demo.toml's client settings and FedAvg, at the demo's 15 rounds: the anchor the draws are measured against.
DEMO = FederatedTrial(
    batch_size=128, lr=0.5, momentum=0.5, max_grad_norm=1.0, local_epochs=1, rounds=15, server_momentum=0.0
)
DEMO_TRIAL = -1  # its trial number in the page and the JSON


def federated_trials(seed: int, trials: int, epochs: tuple[int, ...] = TOTAL_EPOCHS) -> list[FederatedTrial]:
    return [FederatedTrial.draw(random.Random(f"federated:{seed + i}"), epochs) for i in range(trials)]


def load_outcomes(path: Path, same: dict[str, object]) -> list[Outcome]:
    """The trials an earlier run wrote to its JSON (`--resume`), which must have had the same `same` values
    (epsilon, seed, limits; a JSON from before limits were recorded was on all the data)."""
    record = json.loads(path.read_text())
    record.setdefault("limits", asdict(Limits()))
    differ = {k: record.get(k) for k, v in same.items() if record.get(k) != v}
    if differ:
        raise ValueError(f"it is another sweep's ({differ}, this one has {same})")
    fields = set(Outcome.__dataclass_fields__)
    return [Outcome(**{k: v for k, v in trial.items() if k in fields}) for trial in record["trials"]]


def centralized_trials(seed: int, trials: int, epochs: tuple[int, ...] = TOTAL_EPOCHS) -> list[CentralizedTrial]:
    return [CentralizedTrial.draw(random.Random(f"centralized:{seed + i}"), epochs) for i in range(trials)]


def run_federated(
    executor: Executor, trial: FederatedTrial, index: int, *, epsilon: float | None, data_dir: str | None,
    partition: str = "iid", limits: Limits | None = None,
) -> Outcome:  # fmt: skip
    config = trial.config(epsilon=epsilon, partition=partition, limits=limits)
    result = federate(config, executor, data_dir=data_dir)
    last = result.rows[-1] if result.rows else None
    return Outcome(
        side="federated", trial=index, settings=asdict(trial), described=trial.describe(),
        curve=[row.accuracy for row in result.rows], epsilon=last.epsilon if last else None, wall_s=result.wall_s,
        stopped=result.reason,
    )  # fmt: skip


def submit_centralized(
    executor: Executor, trial: CentralizedTrial, *, epsilon: float | None, data_dir: str | None, limits: Limits
) -> Future[list[tuple[float, float, float | None]]]:
    return executor.submit(
        train_centralized, samples=limits.train or MNIST_TRAIN, epochs=trial.epochs, epsilon=epsilon,
        data_dir=data_dir, eval_limit=limits.eval, batch_size=trial.batch_size, lr=trial.lr, momentum=trial.momentum,
        max_grad_norm=trial.max_grad_norm, accountant=ACCOUNTANT,
    )  # fmt: skip


def sweep(
    executor: Executor, *, trials: int, seed: int, epsilon: float, data_dir: str | None,
    epochs: tuple[int, ...] = TOTAL_EPOCHS, limits: Limits | None = None, done: Sequence[Outcome] = (),
) -> list[Outcome]:  # fmt: skip
    """Every trial of both sides; the centralized ones run one per pool worker at a time, the federated one by one
    (a federation already keeps every worker busy). A trial in `done` with the same side, number and settings is
    taken from there instead of run again."""
    limits = limits or Limits()
    earlier = {(o.side, o.trial, json.dumps(o.settings, sort_keys=True)): o for o in done}

    def reused(side: str, index: int, drawn: FederatedTrial | CentralizedTrial) -> Outcome | None:
        return earlier.get((side, index, json.dumps(asdict(drawn), sort_keys=True)))

    outcomes = []
    demo = replace(DEMO, rounds=min(DEMO.rounds, max(epochs)))  # within the sweep's epochs per trial
    federated = [(DEMO_TRIAL, demo), *enumerate(federated_trials(seed, trials, epochs))]
    for index, trial in federated:
        outcome = reused("federated", index, trial) or run_federated(
            executor, trial, index, epsilon=epsilon, data_dir=data_dir, limits=limits
        )
        print(f"[sweep] federated {index}: {outcome.final:.2%} ({trial.describe()})", file=sys.stderr, flush=True)
        outcomes.append(outcome)
    central = list(enumerate(centralized_trials(seed, trials, epochs)))
    outcomes_before = {i: o for i, t in central if (o := reused("centralized", i, t)) is not None}
    futures = {
        i: submit_centralized(executor, t, epsilon=epsilon, data_dir=data_dir, limits=limits)
        for i, t in central
        if i not in outcomes_before
    }
    for index, drawn in central:
        if index in outcomes_before:
            outcomes.append(outcomes_before[index])
            continue
        curve = futures[index].result()
        outcome = Outcome(
            side="centralized", trial=index, settings=asdict(drawn), described=drawn.describe(),
            curve=[accuracy for _, accuracy, _ in curve], epsilon=curve[-1][2] if curve else None,
            wall_s=curve[-1][0] if curve else 0.0, stopped="max_epochs",
        )  # fmt: skip
        print(f"[sweep] centralized {index}: {outcome.final:.2%} ({drawn.describe()})", file=sys.stderr, flush=True)
        outcomes.append(outcome)
    return outcomes


def best(outcomes: list[Outcome], side: str) -> Outcome:
    return max((o for o in outcomes if o.side == side), key=lambda o: o.final)


def page(
    outcomes: list[Outcome],
    *,
    command: str,
    epsilon: float,
    seed: int,
    plot: Path,
    epochs: tuple[int, ...],
    limits: Limits,
) -> list[str]:
    data = (
        "full MNIST (60,000 training, 10,000 test samples)"
        if limits == Limits(None, None)
        else f"the first {limits.train or 60000:,} MNIST training and {limits.eval or 10000:,} test samples"
    )
    lines = [
        f"# DP settings sweep at epsilon = {epsilon:g}",
        "",
        f"Command: `{command}`  ",
        f"Machine: {machine()}",
        "",
        f"A seeded random search (seed {seed}) on {data}, delta = 1e-5, "
        f"{ACCOUNTANT.upper()} accountant, record-level DP-SGD (Opacus, Poisson sampling). Both sides get the same "
        f"budget: {sum(o.side == 'federated' for o in outcomes)} trials each, every trial at most "
        f"{max(epochs)} epochs over the data, drawn from the same lr ({', '.join(map(str, LRS))}), momentum "
        f"({', '.join(map(str, MOMENTA))}), clip ({', '.join(map(str, CLIPS))}) and epoch "
        f"({', '.join(map(str, epochs))}) choices.",
        "",
        f"- **Federated**: {CLIENTS} IID clients with a tenth of the records each, each calibrating its own noise so "
        "that the run "
        f"spends epsilon; int8 updates; also searched: the client batch ({', '.join(map(str, CLIENT_BATCHES))}), "
        f"local epochs per round ({', '.join(map(str, LOCAL_EPOCHS))}) and the server optimizer (FedAvg, or "
        "FedAvgM with server momentum m and server lr 1 - m, a moving average of the rounds' updates).",
        f"- **Centralized**: one model on all the records, batch from {', '.join(map(str, CENTRAL_BATCHES))}.",
        "",
    ]
    for side in ("federated", "centralized"):
        ranked = sorted((o for o in outcomes if o.side == side), key=lambda o: -o.final)
        lines += [
            f"## {side.capitalize()} trials, best first",
            "",
            "| trial | settings | final accuracy | best round/epoch | epsilon spent | wall time |",
            "|---|---|---|---|---|---|",
        ]
        for o in ranked:
            spent = f"{o.epsilon:.2f}" if o.epsilon is not None else "-"
            top = max(o.curve, default=0.0)
            trial = "demo" if o.trial == DEMO_TRIAL else str(o.trial)
            lines.append(f"| {trial} | {o.described} | {o.final:.2%} | {top:.2%} | {spent} | {o.wall_s:.0f} s |")
        lines.append("")
    fed, cen = best(outcomes, "federated"), best(outcomes, "centralized")
    local_epochs = int(str(fed.settings["local_epochs"]))
    curves = {
        f"best federated: {fed.final:.2%}": [(r * local_epochs, a) for r, a in enumerate(fed.curve, 1)],
        f"best centralized: {cen.final:.2%}": list(enumerate(cen.curve, 1)),
    }
    title = f"mnist_dp_cnn, {data.split(' (')[0]}, epsilon {epsilon:g}: the best trial of each side"
    plots.accuracy_per_round(plot, curves, 0.97, title, x_label="epochs over the data")
    lines += [
        "## Best of each side",
        "",
        f"- Federated: **{fed.final:.2%}** ({fed.described}).",
        f"- Centralized: **{cen.final:.2%}** ({cen.described}).",
        "",
        f"![accuracy of the best trial of each side]({plot.name})",
        "",
        "## Why record-level DP at each client trails one centralized model",
        "",
        f"Each of the {CLIENTS} clients clips and noises its own per-sample gradients, so at the same sampling rate "
        f"q and the same steps (hence the same noise multiplier sigma) a client's batch is B = qN/{CLIENTS}. "
        f"Averaging the {CLIENTS} clients' updates leaves noise sigma*C/(B*sqrt({CLIENTS})) on the mean gradient, "
        f"while one model on all the records at batch {CLIENTS}B has sigma*C/({CLIENTS}B): the federation carries "
        f"sqrt({CLIENTS}) = {CLIENTS**0.5:.1f}x the noise for the same signal, because averaging independent noise "
        f"cancels only sqrt(K) of K. Larger client batches raise q and with it sigma, and more rounds spend more "
        f"epsilon, so the search trades one against the other; it found {fed.final:.2%} against "
        f"{cen.final:.2%}. Protecting each client's whole contribution instead of each record (user-level "
        "DP-FedAvg, [privacy.md](../privacy.md)) adds the noise once, at the aggregator, and scales with the "
        "number of clients instead.",
        "",
    ]
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--trials", type=int, default=7, help="per side")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--epsilon", type=float, default=2.0)
    parser.add_argument("--out", type=Path, default=Path("docs/full/dp_sweep.md"))
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--epochs", type=_epochs, default=TOTAL_EPOCHS, help="the total epochs drawn from: 20,30,40")
    parser.add_argument("--train-limit", type=int, default=None, help="the first N training samples (smoke tests)")
    parser.add_argument("--eval-limit", type=int, default=None, help="the first N test samples (smoke tests)")
    parser.add_argument("--resume", type=Path, default=None, help="reuse the trials of this earlier run's JSON")
    args = parser.parse_args(argv)
    if args.trials < 1 or args.epsilon <= 0:
        parser.error("--trials must be at least 1 and --epsilon positive")
    data_dir = os.environ.get("FEDBUS_DATA_DIR")
    command = "python -m benchmarks.dp_sweep " + shlex.join(sys.argv[1:] if argv is None else argv)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    limits = Limits(args.train_limit, args.eval_limit)
    same = {"epsilon": args.epsilon, "seed": args.seed, "limits": asdict(limits)}
    try:
        done = load_outcomes(args.resume, same) if args.resume else []
    except (OSError, ValueError, KeyError, TypeError) as exc:
        parser.error(f"--resume {args.resume}: {exc}")
    with process_pool(args.workers) as executor:
        warm_up(executor, args.workers)
        outcomes = sweep(
            executor, trials=args.trials, seed=args.seed, epsilon=args.epsilon, data_dir=data_dir, epochs=args.epochs,
            limits=limits, done=done,
        )  # fmt: skip
    plot = args.out.with_suffix(".png")
    lines = page(
        outcomes, command=command, epsilon=args.epsilon, seed=args.seed, plot=plot, epochs=args.epochs, limits=limits
    )
    args.out.write_text("\n".join(lines))
    record: dict[str, object] = {"command": command, "machine": machine(), **same}
    record["trials"] = [{**asdict(o), "final": o.final} for o in outcomes]
    args.out.with_suffix(".json").write_text(json.dumps(record, indent=1) + "\n")
    print("\n".join(lines))
    return 0


def _epochs(text: str) -> tuple[int, ...]:
    try:
        epochs = tuple(int(part) for part in text.split(","))
    except ValueError:
        epochs = ()
    if not epochs or min(epochs) < 1:
        raise argparse.ArgumentTypeError(f"must be positive integers separated by commas, got {text!r}")
    return epochs


if __name__ == "__main__":
    sys.exit(main())
