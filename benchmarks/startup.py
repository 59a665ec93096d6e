"""Start-up: `fedbus up --clients N` from its launch to ready, and where the time goes.

Ready is the moment the federation can train: every client registered and the run created (RunCreated in
the log), the point up to which nothing trains. Each repeat launches `fedbus up` as a subprocess on a fresh
RabbitMQ vhost and PostgreSQL database (one round of tiny local work, so the run ends soon after) and reads
the event times from the log, relative to the launch:

- first / last registration: the first and the N-th ClientRegistered;
- ready: RunCreated, appended by the coordinator once N clients registered;
- model: ModelInitialized (an aggregator built the task's initial model);
- round 1: its RoundAggregated (every client trained, uploaded and was aggregated);
- exit: the process ended, `summary.json` written.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from benchmarks.federation import bench_config
from benchmarks.isolation import fresh_deployment
from benchmarks.machine import min_median_max
from contracts.errors import TransientError
from persistence.sql_event_log import SqlEventLog

ROOT = Path(__file__).resolve().parent.parent
PHASES = (
    ("first registration", "first_registered"),
    ("last registration", "last_registered"),
    ("**ready** (RunCreated)", "ready"),
    ("initial model", "model"),
    ("round 1 aggregated", "round_1"),
    ("exit", "exit"),
)


@dataclass(frozen=True, slots=True, kw_only=True)
class Startup:
    """Seconds from the launch of `fedbus up` to each phase."""

    first_registered: float
    last_registered: float
    ready: float
    model: float
    round_1: float
    exit: float


def measure(*, clients: int, data_dir: str | None, timeout_s: float = 600.0) -> Startup:
    """One launch of `fedbus up --clients N` (1 round, DP on, 20 samples per client) on a fresh deployment."""
    config = bench_config(clients=clients, rounds=1, train_limit=20 * clients, eval_limit=200, epsilon=3.0)
    with tempfile.TemporaryDirectory(prefix="fedbus-startup-") as folder, fresh_deployment() as urls:
        work = Path(folder)
        (work / "run.json").write_text(json.dumps({"run": config.to_dict()}))
        env = {**os.environ, **urls, "FEDBUS_STATE_DIR": str(work / "state"), "OMP_NUM_THREADS": "1"}
        if data_dir:
            env["FEDBUS_DATA_DIR"] = data_dir
        command = [sys.executable, "-m", "services.cli.main", "up", "--config", str(work / "run.json")]
        with (work / "up.log").open("wb") as log:
            launched = time.time()
            process = subprocess.run(
                [*command, "--out", str(work / "out")], env=env, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT,
                timeout=timeout_s, check=False,
            )  # fmt: skip
            ended = time.time()
        if process.returncode != 0:
            tail = (work / "up.log").read_text(errors="replace")[-600:]
            raise RuntimeError(f"fedbus up exited {process.returncode}: {tail}")
        times = asyncio.run(_event_times(urls["FEDBUS_DATABASE_URL"]))
    registered = sorted(times["ClientRegistered"])
    return Startup(
        first_registered=registered[0] - launched,
        last_registered=registered[-1] - launched,
        ready=times["RunCreated"][0] - launched,
        model=times["ModelInitialized"][0] - launched,
        round_1=times["RoundAggregated"][0] - launched,
        exit=ended - launched,
    )


async def _event_times(database_url: str) -> dict[str, list[float]]:
    log = await SqlEventLog.connect(database_url, create=False)
    try:
        times: dict[str, list[float]] = {}
        after = 0
        while batch := await log.read_all(after_position=after):
            for recorded in batch:
                times.setdefault(recorded.envelope.type, []).append(recorded.envelope.occurred_at)
            after = batch[-1].position
        return times
    finally:
        await log.close()


def run(*, clients: int, repeats: int, data_dir: str | None) -> list[str]:
    """The section: `repeats` launches, a row per phase (min / median / max), or why it could not run."""
    try:
        results = [measure(clients=clients, data_dir=data_dir) for _ in range(repeats)]
    except (OSError, RuntimeError, TransientError, subprocess.TimeoutExpired) as exc:
        return [f"Not measured: {type(exc).__name__}: {str(exc)[:300]}"]
    lines = [
        f"`fedbus up --clients {clients}` ({repeats} launches, each on a fresh vhost and database; one round of "
        "DP-SGD on 20 samples per client): seconds from the launch to each phase, min / median / max. "
        "Ready is every client registered and RunCreated appended (our aim: 15 s at most).",
        "",
        "| phase | seconds from launch |",
        "|---|---|",
    ]
    for title, attribute in PHASES:
        seconds = min_median_max([getattr(r, attribute) for r in results], ".1f")
        lines.append(f"| {title} | {seconds} |")
    return lines


if __name__ == "__main__":  # python -m benchmarks.startup [CLIENTS [REPEATS]]
    count, times = (int(a) for a in (sys.argv[1:] + ["10", "1"][len(sys.argv) - 1 :])[:2])
    print("\n".join(run(clients=count, repeats=times, data_dir=os.environ.get("FEDBUS_DATA_DIR"))))
