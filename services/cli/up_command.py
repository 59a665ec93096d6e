"""`fedbus up`: a local deployment as OS processes against the configured RabbitMQ and PostgreSQL."""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import os
import secrets
import socket
import sys
import time
import uuid
from pathlib import Path

from rich.console import Console
from rich.text import Text

from contracts.config import RunConfig
from contracts.envelope import RecordedEvent
from contracts.errors import ConfigError
from contracts.events import RunCompleted
from contracts.streams import run_stream
from contracts.tensors import TensorMapping
from ops.settings import Settings
from persistence.migrations import upgrade
from persistence.sql_admin import ensure_database
from persistence.sql_event_log import SqlEventLog
from services.cli.export_command import write_final_model
from services.cli.options import client_folders, config_from, initial_weights_from
from services.cli.report import round_rows, summary, write_metrics, write_plot
from services.cli.run_command import ProgressPrinter, preflight
from services.cli.supervisor import Fleet, FleetFailed, RestartPolicy
from services.embedded import put_model


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def _deploy(
    config: RunConfig, args: argparse.Namespace, console: Console, init_weights: TensorMapping | None
) -> tuple[str, list[RecordedEvent]]:
    settings = Settings.from_env()
    await ensure_database(settings.database_url)
    await upgrade(settings.database_url)
    if init_weights is not None:  # stored before the run names it: the aggregator starts from that blob
        event_log = await SqlEventLog.connect(settings.database_url, create=False)
        try:
            config = dataclasses.replace(config, init_model=await put_model(event_log, init_weights))
        finally:
            await event_log.close()
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
        "FEDBUS_RUN_CONFIG": str(run_file),
        "FEDBUS_RUN_ID": run_id,
        "FEDBUS_WORKERS": "1",
        "OMP_NUM_THREADS": "1",
        "PYTHONUNBUFFERED": "1",
    }
    if settings.data_dir:
        env["FEDBUS_DATA_DIR"] = settings.data_dir
    fleet = Fleet(console, RestartPolicy(limit=args.restarts))
    event_log = await SqlEventLog.connect(settings.database_url, create=False)
    try:
        await fleet.start("coordinator", _role("coordinator"), env)
        for i in range(args.aggregators):
            await fleet.start(f"aggregator-{i}", _role("aggregator"), env)
        folders = client_folders(args.client_data, config.clients)
        for i in range(config.clients):
            # Each client is told what it trains on: its folder, or share i of the simulation's global data set.
            client_env = {**env, "FEDBUS_INSTANCE_NAME": f"up-{run_id}-client-{i}"}
            client_env.pop("FEDBUS_CLIENT_DATA" if folders is None else "FEDBUS_SHARE", None)
            if folders is not None:
                client_env["FEDBUS_CLIENT_DATA"] = str(folders[i].resolve())
            else:
                client_env["FEDBUS_SHARE"] = f"{i}/{config.clients}"
            await fleet.start(f"client-{i}", _role("client"), client_env)
        return run_id, await _follow(event_log, run_id, fleet, ProgressPrinter(console))
    finally:
        await fleet.stop()
        await event_log.close()


def _role(role: str) -> list[str]:
    """The command line of `role`, which drains and exits when this process ends, however it ends."""
    return [sys.executable, "-m", "services.cli.main", "--log-level", "INFO", "--parent-pid", str(os.getpid()), role]


async def _follow(event_log: SqlEventLog, run_id: str, fleet: Fleet, progress: ProgressPrinter) -> list[RecordedEvent]:
    events: list[RecordedEvent] = []
    while True:
        batch = await event_log.read_stream(run_stream(run_id), after_version=len(events))
        for recorded in batch:
            events.append(recorded)
            progress(recorded)
            if isinstance(recorded.envelope.event, RunCompleted):
                return events
        if fleet.failure is not None:
            raise FleetFailed(fleet.failure)
        await asyncio.sleep(0.2)


def up_command(args: argparse.Namespace) -> int:
    if args.restarts < 0:
        raise ConfigError("restarts", f"must be at least 0, got {args.restarts}")
    config = config_from(args)
    settings = Settings.from_env()
    init_weights = initial_weights_from(args.init_from)
    preflight(
        config, settings.data_dir, settings.device, client_folders(args.client_data, config.clients), init_weights
    )
    console = Console(soft_wrap=True)  # log lines are never wrapped, whatever the width of the output
    started = time.perf_counter()
    try:
        run_id, events = asyncio.run(_deploy(config, args, console, init_weights))
    except KeyboardInterrupt:
        console.print("[yellow]stopped: every process was asked to drain[/yellow]")
        return 130
    except FleetFailed as exc:
        console.print(Text(f"fedbus up: stopped, the run did not complete: {exc}", style="red"))
        return 1
    rows = round_rows(events)
    write_metrics(args.out, rows)
    write_plot(args.out, rows, f"fedbus up: {config.task} {config.clients} clients")
    reason = next(r.envelope.event.reason for r in events if isinstance(r.envelope.event, RunCompleted))
    report = summary(run_id=run_id, config=config, rows=rows, reason=reason, wall_seconds=time.perf_counter() - started)
    (args.out / "summary.json").write_text(json.dumps(report, indent=2))
    write_final_model(settings.database_url, run_id, args.out / "model.npz")
    console.print_json(json.dumps({k: v for k, v in report.items() if k != "config"}))
    return 0
