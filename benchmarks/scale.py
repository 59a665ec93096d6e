"""Scale: the deployed system on RabbitMQ and PostgreSQL with 10 to 200 clients per round and tiny local work.

For each client count the benchmark makes a fresh RabbitMQ vhost (with rabbitmqctl, where it is at hand)
and a fresh PostgreSQL database, starts `fedbus coordinator` and `fedbus aggregator` as OS processes exactly
as `fedbus up` does, and one client host process (`benchmarks.scale_clients`) holding N real client workers
whose local training is replaced by a few milliseconds of synthetic work. Every round selects every client
(quorum 1.0). It reads the run's events from the log and samples the two servers' /proc entries:

- round time: RoundStarted to RoundAggregated (the aggregator's evaluation on `eval_limit` test samples
  included); orchestration overhead: round time minus the slowest client's synthetic training;
- ingest: the round's accepted updates (and their wire bytes) over the time from RoundStarted to the last
  UpdateAccepted, which includes every client's model download, so it is a floor on the upload rate;
- coordinator CPU seconds per round (user + system, from the first RoundStarted to RunCompleted) and peak
  resident memory (VmHWM) of the coordinator and of the aggregator process, which folds the updates into one
  streaming sum and so should not grow with the number of clients.
"""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

from benchmarks import plots
from benchmarks.isolation import free_port, fresh_database, fresh_vhost
from benchmarks.machine import min_median_max
from benchmarks.progress import say
from contracts.config import RunConfig
from contracts.envelope import RecordedEvent
from contracts.events import RoundAggregated, RoundStarted, RunCompleted, UpdateAccepted
from contracts.streams import run_stream
from persistence.migrations import upgrade
from persistence.sql_event_log import SqlEventLog
from services.cli.report import round_rows

_TICKS = os.sysconf("SC_CLK_TCK")


@dataclass(frozen=True, slots=True, kw_only=True)
class ScalePoint:
    clients: int
    round_s: list[float]
    overhead_s: list[float]
    upload_window_s: list[float]
    aggregate_s: list[float]
    updates_per_s: list[float]
    mb_per_s: list[float]
    update_bytes: float
    coordinator_cpu_per_round_s: float
    coordinator_peak_mb: float
    aggregator_peak_mb: float
    host_cpu_per_round_s: float


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / _TICKS  # utime, stime


def _peak_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def scale_config(clients: int, rounds: int, model: str, eval_limit: int) -> RunConfig:
    """Every client in every round, no DP (the synthetic trainer spends no privacy), int8 updates."""
    return RunConfig.from_dict(
        {
            "model": model,
            "clients": clients,
            "rounds": rounds,
            "compression": "int8",
            "train_limit": clients * 10,
            "eval_limit": eval_limit,
            "privacy": {"enabled": False},
            "round": {"quorum": 1.0, "grace_s": 0.0, "timeout_s": 600.0},
        }
    )


async def _follow(
    database_url: str, run_id: str, pids: dict[str, int], timeout_s: float
) -> tuple[list[RecordedEvent], dict[str, float]]:
    """The run's events until RunCompleted, and each process's CPU seconds from the first round on."""
    event_log = await SqlEventLog.connect(database_url, create=False)
    events: list[RecordedEvent] = []
    cpu_start: dict[str, float] = {}
    deadline = time.monotonic() + timeout_s
    try:
        while time.monotonic() < deadline:
            for recorded in await event_log.read_stream(run_stream(run_id), after_version=len(events)):
                events.append(recorded)
                event = recorded.envelope.event
                if isinstance(event, RoundStarted) and not cpu_start:
                    cpu_start = {name: _cpu_seconds(pid) for name, pid in pids.items()}
                if isinstance(event, RunCompleted):
                    return events, {name: _cpu_seconds(pid) - cpu_start.get(name, 0.0) for name, pid in pids.items()}
            await asyncio.sleep(0.1)
        raise TimeoutError(f"run {run_id} did not complete in {timeout_s:.0f} s ({len(events)} events)")
    finally:
        await event_log.close()


def measure(
    clients: int,
    rounds: int,
    *,
    model: str,
    eval_limit: int,
    data_dir: str | None,
    amqp_url: str,
    database_url: str,
    profile_to: Path | None = None,
) -> ScalePoint:
    """One client count; `profile_to`: run the coordinator under cProfile and write its stats there."""
    config = scale_config(clients, rounds, model, eval_limit)
    run_id = f"run-{uuid.uuid4().hex[:10]}"
    with (
        tempfile.TemporaryDirectory(prefix="fedbus-scale-") as folder,
        fresh_vhost(amqp_url) as vhost_url,
        fresh_database(database_url) as run_database_url,
    ):
        work = Path(folder)
        asyncio.run(upgrade(run_database_url))
        run_file = work / "run.json"
        run_file.write_text(json.dumps({"run": config.to_dict()}))
        port = free_port()
        env = {
            **os.environ,
            "FEDBUS_AMQP_URL": vhost_url,
            "FEDBUS_DATABASE_URL": run_database_url,
            "FEDBUS_GRPC_BIND": f"127.0.0.1:{port}",
            "FEDBUS_GRPC_ADDRESS": f"127.0.0.1:{port}",
            "FEDBUS_ENROLLMENT_TOKEN": secrets.token_urlsafe(24),
            "FEDBUS_TOKEN_SECRET": secrets.token_urlsafe(32),
            "FEDBUS_RUN_CONFIG": str(run_file),
            "FEDBUS_RUN_ID": run_id,
            "FEDBUS_WORKERS": "1",
            "OMP_NUM_THREADS": "1",
            "PYTHONUNBUFFERED": "1",
            **({"FEDBUS_DATA_DIR": data_dir} if data_dir else {}),
        }
        timings_file = work / "timings.json"
        profiled = ["-m", "cProfile", "-o", str(profile_to)] if profile_to else []
        commands = {
            "coordinator": [sys.executable, *profiled, "-m", "services.cli.main", "coordinator"],
            "aggregator": [sys.executable, "-m", "services.cli.main", "aggregator"],
            "clients": [sys.executable, "-m", "benchmarks.scale_clients", "--count", str(clients),
                        "--timings", str(timings_file)],
        }  # fmt: skip
        processes: dict[str, subprocess.Popen[bytes]] = {}
        try:
            for name, command in commands.items():
                with (work / f"{name}.log").open("wb") as out:
                    processes[name] = subprocess.Popen(command, env=env, stdout=out, stderr=subprocess.STDOUT)
            pids = {name: p.pid for name, p in processes.items()}
            events, cpu = asyncio.run(_follow(run_database_url, run_id, pids, timeout_s=120 + 10 * clients))
            coordinator_mb = _peak_mb(pids["coordinator"])
            aggregator_mb = _peak_mb(pids["aggregator"])
        except BaseException:
            for name in processes:
                tail = (work / f"{name}.log").read_text(errors="replace")[-1500:]
                print(f"[scale] {name} log tail:\n{tail}", file=sys.stderr)
            raise
        finally:
            _stop(processes)
        timings = {int(k): v for k, v in json.loads(timings_file.read_text()).items()}
    return _point(clients, events, timings, cpu, coordinator_mb, aggregator_mb)


def _stop(processes: dict[str, subprocess.Popen[bytes]]) -> None:
    for name in ("clients", "aggregator", "coordinator"):
        process = processes.get(name)
        if process is not None and process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def _point(
    clients: int,
    events: list[RecordedEvent],
    timings: dict[int, list[float]],
    cpu: dict[str, float],
    coordinator_mb: float,
    aggregator_mb: float,
) -> ScalePoint:
    rows = round_rows(events)
    started: dict[int, float] = {}
    last_accept: dict[int, float] = {}
    aggregate: dict[int, float] = {}
    for recorded in events:
        event, at = recorded.envelope.event, recorded.envelope.occurred_at
        if isinstance(event, RoundStarted):
            started.setdefault(event.round, at)
        elif isinstance(event, UpdateAccepted) and not event.late:
            last_accept[event.round] = at
        elif isinstance(event, RoundAggregated):
            aggregate[event.round] = event.duration_s
    windows = [last_accept[r.round] - started[r.round] for r in rows]
    return ScalePoint(
        clients=clients,
        round_s=[r.duration_s for r in rows],
        overhead_s=[r.duration_s - max(timings.get(r.round, [0.0])) for r in rows],
        upload_window_s=windows,
        aggregate_s=[aggregate[r.round] for r in rows],
        updates_per_s=[r.updates / w for r, w in zip(rows, windows, strict=True)],
        mb_per_s=[r.bytes_sent / 1e6 / w for r, w in zip(rows, windows, strict=True)],
        update_bytes=sum(r.bytes_sent for r in rows) / max(1, sum(r.updates for r in rows)),
        coordinator_cpu_per_round_s=cpu["coordinator"] / max(1, len(rows)),
        coordinator_peak_mb=coordinator_mb,
        aggregator_peak_mb=aggregator_mb,
        host_cpu_per_round_s=cpu["clients"] / max(1, len(rows)),
    )


def run(
    *,
    client_counts: tuple[int, ...],
    rounds: int,
    model: str,
    eval_limit: int,
    data_dir: str | None,
    amqp_url: str,
    database_url: str,
    plot: Path | None = None,
) -> list[str]:
    points = []
    for clients in client_counts:
        started = time.perf_counter()
        points.append(
            measure(
                clients, rounds, model=model, eval_limit=eval_limit, data_dir=data_dir, amqp_url=amqp_url,
                database_url=database_url,
            )
        )  # fmt: skip
        say(f"scale: {clients} clients in {time.perf_counter() - started:.0f} s")
    kb = points[0].update_bytes / 1000
    lines = [
        f"`{model}`, int8 updates of ~{kb:,.0f} KB, {rounds} rounds "
        f"per client count, every client selected (quorum 1.0); the coordinator and one aggregator as OS processes "
        f"(`fedbus coordinator`, `fedbus aggregator`) on the local RabbitMQ and PostgreSQL, a fresh vhost and "
        f"database per count; N real client workers (gRPC download and streamed upload, own queue) in one host "
        f"process whose local training is a few milliseconds of synthetic work; evaluation on {eval_limit} test "
        f"samples per round. Timings are min / median / max over the rounds.",
        "",
        "| clients | round time | orchestration overhead | start to last upload | aggregation + evaluation "
        "| ingest updates/s | ingest MB/s | coordinator CPU per round | coordinator peak RSS | aggregator peak RSS "
        "| client host CPU per round |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for p in points:
        lines.append(
            f"| {p.clients} | {min_median_max(p.round_s, '.2f')} s | {min_median_max(p.overhead_s, '.2f')} s "
            f"| {statistics.median(p.upload_window_s):.2f} s | {statistics.median(p.aggregate_s):.2f} s "
            f"| {statistics.median(p.updates_per_s):.0f} | {statistics.median(p.mb_per_s):.1f} "
            f"| {p.coordinator_cpu_per_round_s:.2f} s | {p.coordinator_peak_mb:.0f} MB | {p.aggregator_peak_mb:.0f} MB "
            f"| {p.host_cpu_per_round_s:.2f} s |"
        )
    first, last = points[0], points[-1]
    growth = last.aggregator_peak_mb / first.aggregator_peak_mb
    per_client = [statistics.median(p.overhead_s) / p.clients * 1000 for p in points]
    lines += [
        "",
        f"From {first.clients} to {last.clients} clients the aggregator's peak memory goes from "
        f"{first.aggregator_peak_mb:.0f} MB to {last.aggregator_peak_mb:.0f} MB (**{growth:.2f}x** for "
        f"{last.clients / first.clients:.0f}x the updates) and the coordinator's from {first.coordinator_peak_mb:.0f} "
        f"MB to {last.coordinator_peak_mb:.0f} MB (one gRPC connection per client, at most 64 uploads in flight: "
        f"FEDBUS_MAX_UPLOADS); the median orchestration overhead per client per round "
        f"is {per_client[0]:.0f} ms at {first.clients} clients and {per_client[-1]:.0f} ms at {last.clients} "
        f"(all processes, the client host included, share this machine's {os.cpu_count()} cores).",
    ]
    if plot is not None:
        counts = [p.clients for p in points]
        plots.scale(
            plot,
            counts,
            {
                "round time": [statistics.median(p.round_s) for p in points],
                "RoundStarted to last upload": [statistics.median(p.upload_window_s) for p in points],
                "aggregation + evaluation": [statistics.median(p.aggregate_s) for p in points],
            },
            {
                "coordinator": [p.coordinator_peak_mb for p in points],
                "aggregator": [p.aggregator_peak_mb for p in points],
            },
            f"deployed fedbus, {model}, int8 updates, every client every round",
        )
        lines += ["", f"![round time and memory against clients]({plot.name})"]
    return lines
