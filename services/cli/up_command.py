"""`fedbus up`: a local deployment as OS processes against the configured RabbitMQ and PostgreSQL."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import secrets
import signal
import socket
import sys
import time
import uuid
from pathlib import Path

from rich.console import Console

from contracts.config import RunConfig
from contracts.envelope import RecordedEvent
from contracts.events import RunCompleted
from contracts.streams import run_stream
from ops.settings import Settings
from persistence.migrations import upgrade
from persistence.sql_admin import ensure_database
from persistence.sql_event_log import SqlEventLog
from services.cli.options import config_from
from services.cli.report import round_rows, summary, write_metrics, write_plot
from services.cli.run_command import ProgressPrinter, preflight


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Fleet:
    """The child processes, their prefixed output, and a clean stop."""

    def __init__(self, console: Console) -> None:
        self._console = console
        self.processes: dict[str, asyncio.subprocess.Process] = {}
        self._pumps: list[asyncio.Task[None]] = []

    async def start(self, name: str, role: str, env: dict[str, str]) -> None:
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "services.cli.main", "--log-level", "INFO", role,
            env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
        )  # fmt: skip
        self.processes[name] = process
        self._pumps.append(asyncio.create_task(self._pump(name, process)))

    async def _pump(self, name: str, process: asyncio.subprocess.Process) -> None:
        assert process.stdout is not None
        async for line in process.stdout:
            self._console.print(f"[dim]\\[{name}][/dim] {line.decode(errors='replace').rstrip()}", highlight=False)

    def failed(self) -> list[str]:
        return [f"{n} exited {p.returncode}" for n, p in self.processes.items() if p.returncode not in (None, 0)]

    async def stop(self, grace_s: float = 20.0) -> None:
        for process in self.processes.values():
            if process.returncode is None:
                process.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + grace_s
        for process in self.processes.values():
            try:
                await asyncio.wait_for(process.wait(), max(0.1, deadline - time.monotonic()))
            except TimeoutError:
                process.kill()
                await process.wait()
        await asyncio.gather(*self._pumps, return_exceptions=True)


async def _deploy(config: RunConfig, args: argparse.Namespace, console: Console) -> tuple[str, list[RecordedEvent]]:
    settings = Settings.from_env()
    await ensure_database(settings.database_url)
    await upgrade(settings.database_url)
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    run_file = out / "run.json"
    run_file.write_text(json.dumps({"run": config.to_dict()}))
    run_id = f"run-{uuid.uuid4().hex[:10]}"
    port = _free_port()
    env = {
        **os.environ,
        "FEDBUS_AMQP_URL": settings.amqp_url,
        "FEDBUS_DATABASE_URL": settings.database_url,
        "FEDBUS_GRPC_BIND": f"127.0.0.1:{port}",
        "FEDBUS_GRPC_ADDRESS": f"127.0.0.1:{port}",
        "FEDBUS_ENROLLMENT_TOKEN": settings.enrollment_token or secrets.token_urlsafe(24),
        "FEDBUS_TOKEN_SECRET": settings.token_secret or secrets.token_urlsafe(32),
        "FEDBUS_PARTITIONS": str(config.clients),
        "FEDBUS_RUN_CONFIG": str(run_file),
        "FEDBUS_RUN_ID": run_id,
        "FEDBUS_WORKERS": "1",
        "OMP_NUM_THREADS": "1",
        "PYTHONUNBUFFERED": "1",
    }
    if settings.data_dir:
        env["FEDBUS_DATA_DIR"] = settings.data_dir
    fleet = Fleet(console)
    event_log = await SqlEventLog.connect(settings.database_url, create=False)
    try:
        await fleet.start("coordinator", "coordinator", env)
        for i in range(args.aggregators):
            await fleet.start(f"aggregator-{i}", "aggregator", env)
        for i in range(config.clients):
            await fleet.start(f"client-{i}", "client", {**env, "FEDBUS_INSTANCE_NAME": f"up-{run_id}-client-{i}"})
        return run_id, await _follow(event_log, run_id, fleet, ProgressPrinter(console))
    finally:
        await fleet.stop()
        await event_log.close()


async def _follow(event_log: SqlEventLog, run_id: str, fleet: Fleet, progress: ProgressPrinter) -> list[RecordedEvent]:
    events: list[RecordedEvent] = []
    while True:
        batch = await event_log.read_stream(run_stream(run_id), after_version=len(events))
        for recorded in batch:
            events.append(recorded)
            progress(recorded)
            if isinstance(recorded.envelope.event, RunCompleted):
                return events
        if "coordinator" in fleet.processes and fleet.processes["coordinator"].returncode is not None:
            raise RuntimeError(f"the coordinator stopped: {', '.join(fleet.failed()) or 'exit 0'}")
        await asyncio.sleep(0.2)


def up_command(args: argparse.Namespace) -> int:
    config = config_from(args)
    settings = Settings.from_env()
    preflight(config, settings.data_dir, settings.device)
    console = Console()
    started = time.perf_counter()
    try:
        run_id, events = asyncio.run(_deploy(config, args, console))
    except KeyboardInterrupt:
        console.print("[yellow]stopped: every process was asked to drain[/yellow]")
        return 130
    rows = round_rows(events)
    write_metrics(args.out, rows)
    write_plot(args.out, rows, f"fedbus up: {config.dataset} {config.clients} clients")
    reason = next(r.envelope.event.reason for r in events if isinstance(r.envelope.event, RunCompleted))
    report = summary(run_id=run_id, config=config, rows=rows, reason=reason, wall_seconds=time.perf_counter() - started)
    (args.out / "summary.json").write_text(json.dumps(report, indent=2))
    console.print_json(json.dumps({k: v for k, v in report.items() if k != "config"}))
    return 0
