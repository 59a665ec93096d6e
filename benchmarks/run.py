"""`make bench`: run the benchmarks side by side and write docs/benchmarks.md."""

from __future__ import annotations

import argparse
import os
import shlex
import sys
from pathlib import Path

from benchmarks import aggregation, compression, load, training
from benchmarks.machine import machine

PROFILES = {
    "quick": {"updates": 20, "params": 1_663_370, "repeats": 5, "samples": 3000, "clients": 200},
    "smoke": {"updates": 3, "params": 10_000, "repeats": 1, "samples": 300, "clients": 10},
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--profile", choices=sorted(PROFILES), default="quick")
    parser.add_argument("--out", type=Path, default=Path("docs/benchmarks.md"))
    args = parser.parse_args(argv)
    p = PROFILES[args.profile]
    data_dir = os.environ.get("FEDBUS_DATA_DIR")
    command = "make bench" if args.profile == "quick" else "python -m benchmarks.run " + shlex.join(sys.argv[1:])
    sections = [
        "# fedbus benchmarks",
        "",
        f"Command: `{command}`  ",
        f"Machine: {machine()}",
        "",
        "Timings are wall-clock on a shared machine; each table was measured side by side in one run.",
        "",
        "## Aggregation throughput",
        "",
        *aggregation.run(updates=p["updates"], params=p["params"], repeats=p["repeats"]),
        "",
        "## Compression",
        "",
        *compression.run(data_dir=data_dir, model="mnist_dp_cnn", repeats=p["repeats"]),
        "",
        "## Framework overhead of local DP training",
        "",
        *training.run(data_dir=data_dir, samples=p["samples"], batch=64, repeats=min(3, p["repeats"])),
        "",
        "## Load: concurrent uploads to one coordinator",
        "",
        *load.run(clients=p["clients"], max_uploads=64),
        "",
    ]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n".join(sections))
    print("\n".join(sections))
    return 0


if __name__ == "__main__":
    sys.exit(main())
