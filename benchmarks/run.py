"""`make bench`: run the benchmarks side by side and write docs/benchmarks.md (figures as PNGs beside it)."""

from __future__ import annotations

import argparse
import contextlib
import functools
import os
import shlex
import sys
import time
from collections.abc import Callable
from concurrent.futures import Executor
from dataclasses import dataclass
from pathlib import Path

from benchmarks import (
    aggregation,
    centralized,
    compression,
    compression_accuracy,
    flower,
    heterogeneity,
    latency,
    load,
    privacy_utility,
    scale,
    startup,
    strategies,
    tasks_accuracy,
    training,
    user_level,
)
from benchmarks.machine import machine
from benchmarks.progress import say
from contracts.errors import ConfigError, TransientError
from ops.settings import Settings
from services.roots.pool import process_pool, warm_up
from workers.learning.training import check_device


@dataclass(frozen=True, slots=True, kw_only=True)
class Profile:
    """Sizes of one profile: the micro-benchmarks', then the federated trainings' (train_limit None: all data)."""

    updates: int
    params: int
    repeats: int
    samples: int
    clients: int
    train_limit: int | None
    eval_limit: int | None
    rounds: int  # privacy sweep and federated vs centralized
    epsilons: tuple[float | None, ...]
    codec_rounds: int
    codec_target: float
    latency_clients: tuple[int, ...]
    latency_rounds: int
    latency_target: float
    device_s: float
    scale_clients: tuple[int, ...]
    scale_rounds: int
    scale_model: str
    flower_rounds: int
    flower_target: float
    flower_deployed: bool  # also `fedbus up` and Flower's deployment engine (one process per client)
    flower_install: bool  # create Flower's virtual environment when missing (else: only if it exists)
    task_rounds: int  # fashion_mnist_cnn: all of Fashion-MNIST in quick and full; quick runs only epsilon 3
    task_epsilons: tuple[float | None, ...]
    task_train_limit: int | None
    task_eval_limit: int | None
    startup_clients: int  # `fedbus up --clients N` launched startup_repeats times, to ready and to round 1
    startup_repeats: int
    strategy_rounds: int  # without DP: to strategy_target or this many rounds
    strategy_dp_rounds: int
    strategy_target: float
    strategy_partitions: tuple[str, ...]
    user_clients: int  # user-level DP-FedAvg at each of `epsilons`
    user_rounds: int
    user_local_epochs: int
    heterogeneity_clients: tuple[int, ...]
    heterogeneity_target: float  # the 95% without DP (quick: its 6,000 samples reach it in ~20-35 rounds)
    # Record-level DP: the same modes to heterogeneity_dp_target at this budget. quick: 40%, near what DP-SGD
    # at epsilon 3 reaches on its 120-240 samples per client (a trial of quorum 0.8 at 25 clients: 44%).
    heterogeneity_epsilon: float
    heterogeneity_dp_target: float
    heterogeneity_rounds: int  # the budget without DP: this many rounds of every client
    heterogeneity_dp_rounds: int  # ... with DP, which each client's noise is calibrated over


EPSILONS = (0.5, 1.0, 2.0, 3.0, 8.0, None)
STRATEGY_PARTITIONS = ("iid", "dirichlet:0.5", "dirichlet:0.1")
PROFILES = {
    "full": Profile(
        updates=20, params=1_663_370, repeats=5, samples=3000, clients=200, train_limit=None, eval_limit=None,
        rounds=15, epsilons=EPSILONS, codec_rounds=15, codec_target=0.97, latency_clients=(10, 25, 50),
        latency_rounds=30, latency_target=0.95, device_s=1.0, scale_clients=(10, 25, 50, 100, 200), scale_rounds=5,
        scale_model="mnist_cnn", flower_rounds=15, flower_target=0.9, flower_deployed=True, flower_install=True,
        task_rounds=20, task_epsilons=(3.0, 2.0, None), task_train_limit=None, task_eval_limit=None,
        startup_clients=10, startup_repeats=3, strategy_rounds=30, strategy_dp_rounds=15, strategy_target=0.97,
        strategy_partitions=STRATEGY_PARTITIONS, user_clients=100, user_rounds=5, user_local_epochs=5,
        heterogeneity_clients=(25, 50), heterogeneity_target=0.95, heterogeneity_rounds=30,
        heterogeneity_epsilon=2.0, heterogeneity_dp_target=0.9, heterogeneity_dp_rounds=30,
    ),
    "quick": Profile(
        updates=20, params=1_663_370, repeats=5, samples=3000, clients=200, train_limit=6000, eval_limit=2000,
        rounds=4, epsilons=EPSILONS, codec_rounds=6, codec_target=0.9, latency_clients=(10, 25),
        latency_rounds=12, latency_target=0.8, device_s=0.5, scale_clients=(10, 25, 50, 100, 200), scale_rounds=3,
        scale_model="mnist_cnn", flower_rounds=4, flower_target=0.5, flower_deployed=True, flower_install=True,
        task_rounds=20, task_epsilons=(3.0,), task_train_limit=None, task_eval_limit=None,
        startup_clients=10, startup_repeats=3, strategy_rounds=12, strategy_dp_rounds=4, strategy_target=0.9,
        strategy_partitions=STRATEGY_PARTITIONS, user_clients=100, user_rounds=5, user_local_epochs=5,
        heterogeneity_clients=(25, 50), heterogeneity_target=0.95, heterogeneity_rounds=40,
        heterogeneity_epsilon=3.0, heterogeneity_dp_target=0.4, heterogeneity_dp_rounds=20,
    ),
    "smoke": Profile(
        updates=3, params=10_000, repeats=1, samples=300, clients=10, train_limit=100, eval_limit=100,
        rounds=1, epsilons=(1.0, None), codec_rounds=1, codec_target=0.5, latency_clients=(10,),
        latency_rounds=1, latency_target=0.5, device_s=0.05, scale_clients=(3,), scale_rounds=1,
        scale_model="mnist_dp_cnn", flower_rounds=1, flower_target=0.05, flower_deployed=False,
        flower_install=False, task_rounds=1, task_epsilons=(3.0, None), task_train_limit=100, task_eval_limit=100,
        startup_clients=3, startup_repeats=1, strategy_rounds=1, strategy_dp_rounds=1, strategy_target=0.5,
        strategy_partitions=("iid",), user_clients=10, user_rounds=1, user_local_epochs=1,
        heterogeneity_clients=(5,), heterogeneity_target=0.5, heterogeneity_rounds=1,
        heterogeneity_epsilon=3.0, heterogeneity_dp_target=0.3, heterogeneity_dp_rounds=1,
    ),
}  # fmt: skip


@dataclass(slots=True, kw_only=True)
class Context:
    """What the sections share in one run: the sizes, the data, the output folder and the training pool."""

    p: Profile
    data_dir: str | None
    folder: Path
    device: str = "cpu"
    pool: Executor | None = None
    workers: int = 1
    sweep: privacy_utility.Sweep | None = None

    @property
    def executor(self) -> Executor:
        assert self.pool is not None, "a pooled section ran without the pool"
        return self.pool

    @property
    def sizes(self) -> dict[str, int | None]:
        return {"train_limit": self.p.train_limit, "eval_limit": self.p.eval_limit}


def _privacy(c: Context) -> list[str]:
    lines, c.sweep = privacy_utility.run(
        c.executor, data_dir=c.data_dir, clients=10, rounds=c.p.rounds, epsilons=c.p.epsilons,
        partitions=("iid", "dirichlet:0.5"), plot=c.folder / "privacy_utility.png", **c.sizes,
    )  # fmt: skip
    return lines


def _centralized(c: Context) -> list[str]:
    epsilon = 3.0 if 3.0 in c.p.epsilons else next(e for e in c.p.epsilons if e is not None)
    federated = c.sweep.results.get(("iid", epsilon)) if c.sweep is not None else None
    return centralized.run(
        c.executor, data_dir=c.data_dir, clients=10, rounds=c.p.rounds, epsilon=epsilon, workers=c.workers,
        federated=federated, **c.sizes,
    )  # fmt: skip


def _tasks(c: Context) -> list[str]:
    lines = tasks_accuracy.run(
        c.executor, data_dir=c.data_dir, clients=10, rounds=c.p.task_rounds, epsilons=c.p.task_epsilons,
        train_limit=c.p.task_train_limit, eval_limit=c.p.task_eval_limit, plot=c.folder / "fashion_mnist.png",
    )  # fmt: skip
    full = PROFILES["full"]
    if (c.p.task_rounds, c.p.task_epsilons) != (full.task_rounds, full.task_epsilons):
        runs = ", ".join("no DP" if e is None else f"epsilon {e:g}" for e in full.task_epsilons)
        note = f"`--profile full` runs {runs}, {full.task_rounds} rounds each on all the data, same local settings."
        lines += ["", note]
    return lines


# name -> (title, body, needs the training pool); `--only` picks names, the order here is the page's.
SECTIONS: dict[str, tuple[str, Callable[[Context], list[str]], bool]] = {
    "aggregation": ("Aggregation throughput", lambda c: aggregation.run(
        updates=c.p.updates, params=c.p.params, repeats=c.p.repeats), False),
    "compression": ("Compression", lambda c: compression.run(
        data_dir=c.data_dir, model="mnist_dp_cnn", repeats=c.p.repeats), False),
    "training": ("Local DP training: framework overhead, CPU and GPU", lambda c: training.run(
        data_dir=c.data_dir, samples=c.p.samples, batches=(64, 256), repeats=min(3, c.p.repeats),
        devices=training.devices_here()), False),
    "load": ("Load: concurrent uploads to one coordinator", lambda c: load.run(
        clients=c.p.clients, max_uploads=64), False),
    "privacy": ("Privacy-utility trade-off", _privacy, True),
    "user_privacy": ("User-level DP: DP-FedAvg with adaptive clipping", lambda c: user_level.run(
        c.executor, data_dir=c.data_dir, clients=c.p.user_clients, rounds=c.p.user_rounds,
        local_epochs=c.p.user_local_epochs, epsilons=c.p.epsilons, plot=c.folder / "user_privacy.png", **c.sizes),
        True),
    "centralized": ("Federated vs centralized DP training", _centralized, True),
    "tasks": ("Fashion-MNIST under DP: a second built-in task", _tasks, True),
    "strategies": ("Strategies: FedAvg, FedAvgM, FedAdam, FedYogi, FedProx", lambda c: strategies.run(
        c.executor, data_dir=c.data_dir, clients=10, rounds=c.p.strategy_rounds, dp_rounds=c.p.strategy_dp_rounds,
        target=c.p.strategy_target, epsilon=2.0, partitions=c.p.strategy_partitions,
        plot=c.folder / "strategies.png", **c.sizes), True),
    "codecs": ("Compression and accuracy", lambda c: compression_accuracy.run(
        c.executor, data_dir=c.data_dir, clients=10, rounds=c.p.codec_rounds, target=c.p.codec_target,
        **c.sizes), True),
    "latency": ("Latency with stragglers and slow uplinks", lambda c: latency.run(
        c.executor, data_dir=c.data_dir, client_counts=c.p.latency_clients, rounds=c.p.latency_rounds,
        target=c.p.latency_target, base_compute_s=c.p.device_s, plot=c.folder / "latency.png", **c.sizes), True),
    "heterogeneity": (
        "Heterogeneous clients: synchronous, quorum 0.8, capability-aware plans and FedBuff",
        lambda c: heterogeneity.run(
        c.executor, data_dir=c.data_dir, client_counts=c.p.heterogeneity_clients, rounds=c.p.heterogeneity_rounds,
        target=c.p.heterogeneity_target, dp_epsilon=c.p.heterogeneity_epsilon, dp_target=c.p.heterogeneity_dp_target,
        dp_rounds=c.p.heterogeneity_dp_rounds, base_compute_s=c.p.device_s, plot=c.folder / "heterogeneity.png",
        noniid_plot=c.folder / "heterogeneity_noniid.png", dp_plot=c.folder / "heterogeneity_dp.png",
        **c.sizes),
        True),
    "scale": ("Scale on RabbitMQ and PostgreSQL", lambda c: _scale(c.p, c.data_dir, c.folder / "scale.png"), False),
    "startup": ("Start-up of a deployment: fedbus up", lambda c: startup.run(
        clients=c.p.startup_clients, repeats=c.p.startup_repeats, data_dir=c.data_dir), False),
    "flower": ("Against a peer: Flower", lambda c: flower.run(
        c.executor, data_dir=c.data_dir, clients=10, rounds=c.p.flower_rounds, target=c.p.flower_target,
        workers=c.workers, install=c.p.flower_install, deployed=c.p.flower_deployed, plot=c.folder / "flower.png",
        **c.sizes), True),
}  # fmt: skip


def _names(text: str) -> list[str]:
    names = [n.strip() for n in text.split(",") if n.strip()]
    unknown = [n for n in names if n not in SECTIONS]
    if unknown or not names:
        raise argparse.ArgumentTypeError(f"unknown section(s) {unknown}; choose from {', '.join(SECTIONS)}")
    return names


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--profile", choices=sorted(PROFILES), default="quick")
    parser.add_argument("--out", type=Path, default=Path("docs/benchmarks.md"))
    parser.add_argument("--device", default="cpu", help="where the training sections train: cpu, cuda or cuda:N")
    parser.add_argument("--only", type=_names, default=list(SECTIONS), help=f"comma-separated: {','.join(SECTIONS)}")
    args = parser.parse_args(argv)
    try:
        device = check_device(args.device)
    except ConfigError as exc:
        parser.error(str(exc))
    context = Context(
        p=PROFILES[args.profile], data_dir=os.environ.get("FEDBUS_DATA_DIR"), folder=args.out.parent, device=device
    )
    command = "python -m benchmarks.run " + shlex.join(sys.argv[1:] if argv is None else argv)
    context.folder.mkdir(parents=True, exist_ok=True)
    lines = [
        "# fedbus benchmarks",
        "",
        f"Command: `{command}` (profile `{args.profile}`)  ",
        f"Machine: {machine()}; the federated sections train on `{context.device}`",
        "",
        "Timings are wall-clock on a shared machine; each table was measured side by side in one run.",
        "",
    ]  # fmt: skip
    chosen = [name for name in SECTIONS if name in args.only]
    with contextlib.ExitStack() as stack:
        if any(SECTIONS[name][2] for name in chosen):
            # One pool for every training section: its workers keep MNIST loaded between runs.
            context.workers = max(1, min(os.cpu_count() or 1, 8))
            context.pool = stack.enter_context(process_pool(context.workers, context.device))
            warm_up(context.pool, context.workers)
        for name in chosen:
            title, body, _pooled = SECTIONS[name]
            lines += _section(title, functools.partial(body, context))
    args.out.write_text("\n".join(lines))
    print("\n".join(lines))
    return 0


def _scale(p: Profile, data_dir: str | None, plot: Path) -> list[str]:
    """The deployed scale benchmark, or one line saying why it could not run (no RabbitMQ or PostgreSQL here)."""
    settings = Settings.from_env()
    try:
        return scale.run(
            client_counts=p.scale_clients, rounds=p.scale_rounds, model=p.scale_model, eval_limit=500,
            data_dir=data_dir, amqp_url=settings.amqp_url, database_url=settings.database_url, plot=plot,
        )  # fmt: skip
    except (OSError, TransientError) as exc:
        return [f"Not measured: RabbitMQ or PostgreSQL unreachable ({type(exc).__name__}: {exc})."]


def _section(title: str, body: Callable[[], list[str]]) -> list[str]:
    started = time.perf_counter()
    lines = body()
    return [f"## {title}", "", *lines, "", _took(started), ""]


def _took(started: float) -> str:
    line = f"_This section ran in {time.perf_counter() - started:.0f} s._"
    say(line)
    return line


if __name__ == "__main__":
    sys.exit(main())
