"""Where the coordinator's CPU goes per accepted update: the scale benchmark's deployment (RabbitMQ, PostgreSQL,
`fedbus coordinator` and `fedbus aggregator` as OS processes, N clients sending ~1.4 MB int8 updates of
`mnist_cnn`), with the coordinator under cProfile; its own time grouped by package, per accepted update.

    python -m benchmarks.coordinator_profile --clients 50 --rounds 3 --out /tmp/coordinator.prof

cProfile slows Python-level code about twofold, so the figures are shares of the time, not the time itself
(benchmarks/scale.py measures that, unprofiled).
"""

from __future__ import annotations

import argparse
import collections
import os
import pstats
from pathlib import Path

from benchmarks.scale import measure


def grouped(stats: pstats.Stats) -> collections.Counter[str]:
    """Own time (tottime) by where it is spent: a package, fedbus's top-level folder, or a builtin call."""
    groups: collections.Counter[str] = collections.Counter()
    for (file, _line, name), row in stats.stats.items():  # type: ignore[attr-defined]
        own = row[2]
        if "epoll" in name:
            key = "idle (waiting in epoll)"
        elif "site-packages/" in file:
            key = file.split("site-packages/")[1].split("/")[0]
        elif file == "~":
            key = f"builtin {name[:50]}"
        elif "/benchmarks/" not in file and any(f"/{top}/" in file for top in ("services", "contracts", "persistence")):
            key = "fedbus " + next(top for top in ("services", "contracts", "persistence") if f"/{top}/" in file)
        else:
            key = f"stdlib {Path(file).name}"
        groups[key] += own
    return groups


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", type=int, default=50)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--out", type=Path, default=Path("coordinator.prof"))
    parser.add_argument("--top", type=int, default=15)
    args = parser.parse_args()
    point = measure(
        args.clients, args.rounds, model="mnist_cnn", eval_limit=500, data_dir=os.environ.get("FEDBUS_DATA_DIR"),
        amqp_url=os.environ.get("FEDBUS_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/"),
        database_url=os.environ.get("FEDBUS_DATABASE_URL", "postgresql://root@127.0.0.1:5432/fedbus"),
        profile_to=args.out.resolve(),
    )  # fmt: skip
    updates = args.clients * args.rounds
    groups = grouped(pstats.Stats(str(args.out)))
    busy = sum(v for k, v in groups.items() if not k.startswith("idle"))
    each = 1e3 * busy / updates
    print(f"coordinator under cProfile: {busy:.2f} s busy for {updates} updates ({each:.1f} ms each, start-up in)")
    print(f"its CPU per round (user + system, profiler included): {point.coordinator_cpu_per_round_s:.2f} s")
    print("| where | own time | per update | share |\n|---|---|---|---|")
    for key, seconds in groups.most_common(args.top + 1):
        if not key.startswith("idle"):
            print(f"| {key} | {seconds:.2f} s | {1e3 * seconds / updates:.1f} ms | {seconds / busy:.0%} |")


if __name__ == "__main__":
    main()
