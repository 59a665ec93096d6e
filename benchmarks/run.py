"""`make bench`: run the benchmarks side by side and write docs/benchmarks.md (figures as PNGs beside it)."""

from __future__ import annotations

import argparse
import os
import shlex
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from benchmarks import (
    aggregation,
    centralized,
    compression,
    compression_accuracy,
    latency,
    load,
    privacy_utility,
    scale,
    training,
)
from benchmarks.machine import machine
from contracts.errors import TransientError
from ops.settings import Settings
from services.deployed.pool import process_pool


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


EPSILONS = (0.5, 1.0, 2.0, 3.0, 8.0, None)
PROFILES = {
    "full": Profile(
        updates=20, params=1_663_370, repeats=5, samples=3000, clients=200, train_limit=None, eval_limit=None,
        rounds=15, epsilons=EPSILONS, codec_rounds=15, codec_target=0.97, latency_clients=(10, 25, 50),
        latency_rounds=30, latency_target=0.95, device_s=1.0, scale_clients=(10, 25, 50, 100, 200), scale_rounds=5,
        scale_model="mnist_cnn",
    ),
    "quick": Profile(
        updates=20, params=1_663_370, repeats=5, samples=3000, clients=200, train_limit=6000, eval_limit=2000,
        rounds=4, epsilons=EPSILONS, codec_rounds=6, codec_target=0.9, latency_clients=(10, 25),
        latency_rounds=12, latency_target=0.8, device_s=0.5, scale_clients=(10, 25, 50, 100, 200), scale_rounds=3,
        scale_model="mnist_cnn",
    ),
    "smoke": Profile(
        updates=3, params=10_000, repeats=1, samples=300, clients=10, train_limit=100, eval_limit=100,
        rounds=1, epsilons=(1.0, None), codec_rounds=1, codec_target=0.5, latency_clients=(10,),
        latency_rounds=1, latency_target=0.5, device_s=0.05, scale_clients=(3,), scale_rounds=1,
        scale_model="mnist_dp_cnn",
    ),
}  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--profile", choices=sorted(PROFILES), default="quick")
    parser.add_argument("--out", type=Path, default=Path("docs/benchmarks.md"))
    args = parser.parse_args(argv)
    p = PROFILES[args.profile]
    data_dir = os.environ.get("FEDBUS_DATA_DIR")
    command = "make bench" if args.profile == "quick" else "python -m benchmarks.run " + shlex.join(sys.argv[1:])
    folder: Path = args.out.parent
    folder.mkdir(parents=True, exist_ok=True)
    sections = [
        "# fedbus benchmarks",
        "",
        f"Command: `{command}` (profile `{args.profile}`)  ",
        f"Machine: {machine()}",
        "",
        "Timings are wall-clock on a shared machine; each table was measured side by side in one run.",
        "",
        *_section("Aggregation throughput", lambda: aggregation.run(
            updates=p.updates, params=p.params, repeats=p.repeats)),
        *_section("Compression", lambda: compression.run(data_dir=data_dir, model="mnist_dp_cnn", repeats=p.repeats)),
        *_section("Framework overhead of local DP training", lambda: training.run(
            data_dir=data_dir, samples=p.samples, batch=64, repeats=min(3, p.repeats))),
        *_section("Load: concurrent uploads to one coordinator", lambda: load.run(clients=p.clients, max_uploads=64)),
        *_federated_sections(p, data_dir, folder),
        *_section("Scale on RabbitMQ and PostgreSQL", lambda: _scale(p, data_dir)),
    ]  # fmt: skip
    args.out.write_text("\n".join(sections))
    print("\n".join(sections))
    return 0


def _federated_sections(p: Profile, data_dir: str | None, folder: Path) -> list[str]:
    """The sections that train federations, sharing one process pool (its workers keep MNIST loaded)."""
    workers = max(1, min(os.cpu_count() or 1, 8))
    sizes = {"train_limit": p.train_limit, "eval_limit": p.eval_limit}
    with process_pool(workers) as pool:
        started = time.perf_counter()
        sweep_lines, sweep = privacy_utility.run(
            pool, data_dir=data_dir, clients=10, rounds=p.rounds, epsilons=p.epsilons,
            partitions=("iid", "dirichlet:0.5"), plot=folder / "privacy_utility.png", **sizes,
        )  # fmt: skip
        lines = ["## Privacy-utility trade-off", "", *sweep_lines, "", _took(started), ""]
        epsilon = 3.0 if 3.0 in p.epsilons else next(e for e in p.epsilons if e is not None)
        lines += _section(
            "Federated vs centralized DP training",
            lambda: centralized.run(
                pool,
                data_dir=data_dir,
                clients=10,
                rounds=p.rounds,
                epsilon=epsilon,
                workers=workers,
                federated=sweep.results.get(("iid", epsilon)),
                **sizes,
            ),
        )
        lines += _section(
            "Compression and accuracy",
            lambda: compression_accuracy.run(
                pool, data_dir=data_dir, clients=10, rounds=p.codec_rounds, target=p.codec_target, **sizes
            ),
        )
        lines += _section(
            "Latency with stragglers and slow uplinks",
            lambda: latency.run(
                pool,
                data_dir=data_dir,
                client_counts=p.latency_clients,
                rounds=p.latency_rounds,
                target=p.latency_target,
                base_compute_s=p.device_s,
                plot=folder / "latency.png",
                **sizes,
            ),
        )
    return lines  # fmt: skip


def _scale(p: Profile, data_dir: str | None) -> list[str]:
    """The deployed scale benchmark, or one line saying why it could not run (no RabbitMQ or PostgreSQL here)."""
    settings = Settings.from_env()
    try:
        return scale.run(
            client_counts=p.scale_clients, rounds=p.scale_rounds, model=p.scale_model, eval_limit=500,
            data_dir=data_dir, amqp_url=settings.amqp_url, database_url=settings.database_url,
        )  # fmt: skip
    except (OSError, TransientError) as exc:
        return [f"Not measured: RabbitMQ or PostgreSQL unreachable ({type(exc).__name__}: {exc})."]


def _section(title: str, body: Callable[[], list[str]]) -> list[str]:
    started = time.perf_counter()
    lines = body()
    return [f"## {title}", "", *lines, "", _took(started), ""]


def _took(started: float) -> str:
    line = f"_This section ran in {time.perf_counter() - started:.0f} s._"
    print(f"[bench] {line}", file=sys.stderr, flush=True)
    return line


if __name__ == "__main__":
    sys.exit(main())
