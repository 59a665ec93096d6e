"""`fedbus run`: the embedded federated training, with progress, a summary table and files in --out."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table

from contracts.config import RunConfig
from contracts.envelope import RecordedEvent
from contracts.errors import ConfigError
from contracts.events import ClientDeclined, RoundAggregated, RoundFailed, RoundStarted, RunCompleted, RunCreated
from contracts.run_state import RunState, state_from_created
from contracts.tensor_codec import decode_tensors
from services.api.server import ApiServer
from services.api.settings import ApiSettings
from services.cli.options import config_from
from services.cli.report import round_rows, summary, write_metrics, write_plot
from services.embedded import run_embedded
from workers.learning.checkpoint import save_checkpoint
from workers.learning.datasets import load_dataset
from workers.learning.partition import validate_partition_scheme
from workers.learning.training import check_device


def preflight(config: RunConfig, data_dir: str | None, device: str = "cpu") -> None:
    """Fail fast, before any process starts, on what only the learning code can check."""
    check_device(device)
    validate_partition_scheme(config.partition)
    train = load_dataset(config.dataset, train=True, data_dir=data_dir)
    load_dataset(config.dataset, train=False, data_dir=data_dir)
    if config.clients > len(train):
        raise ConfigError("clients", f"must be at most the {len(train)} training samples")


class ProgressPrinter:
    """One line per round as the run's events arrive, from the same run-state fold as the reports."""

    def __init__(self, console: Console) -> None:
        self._console = console
        self._run: RunState | None = None

    def __call__(self, recorded: RecordedEvent) -> None:
        event = recorded.envelope.event
        if self._run is None:
            if not isinstance(event, RunCreated):
                return
            self._run = state_from_created(event, recorded.envelope.occurred_at)
        self._run.apply_recorded(recorded)
        if isinstance(event, RoundStarted):
            self._console.print(
                f"[dim]round {event.round} (attempt {event.attempt}): {len(event.selected)} clients selected[/dim]"
            )
        elif isinstance(event, ClientDeclined):
            self._console.print(f"[yellow]  {event.client_id} declined round {event.round}: {event.reason}[/yellow]")
        elif isinstance(event, RoundFailed):
            self._console.print(f"[red]  round {event.round} failed: {event.reason}[/red]")
        elif isinstance(event, RoundAggregated):
            row = self._run.summaries[-1]
            self._console.print(
                f"round {row.round:>3}  accuracy {row.accuracy:.4f}  loss {row.loss:.4f}  "
                + (f"epsilon {row.epsilon:.3f}  " if row.epsilon is not None else "no DP  ")
                + f"updates {row.updates}  sent {row.bytes_sent / 1024:.1f} KiB  ratio {row.compression_ratio:.2f}x  "
                f"({row.aggregate_s:.1f}s aggregate)"
            )
        elif isinstance(event, RunCompleted):
            self._console.print(f"[bold]run completed: {event.reason} after {event.rounds} rounds[/bold]")


def run_command(args: argparse.Namespace) -> int:
    config = config_from(args)
    data_dir = args.data_dir or os.environ.get("FEDBUS_DATA_DIR")
    preflight(config, data_dir, args.device)
    console = Console()
    out: Path = args.out
    dp = f"DP epsilon<={config.privacy.epsilon} delta={config.privacy.delta}" if config.privacy.enabled else "no DP"
    console.print(
        f"[bold]fedbus run[/bold]: {config.dataset} / {config.model}, {config.clients} clients ({config.partition}), "
        f"{dp}, compression {config.compression}, up to {config.rounds} rounds -> {out}"
    )
    started = time.perf_counter()
    api: list[ApiServer] = []

    def serve(database: Path) -> None:
        if args.serve is not None:
            settings = ApiSettings.from_env(database_url=f"sqlite+aiosqlite:///{database}", port=args.serve)
            api.append(ApiServer(settings).start())
            console.print(f"dashboard and API: {api[0].url}/ (while the run lasts)")

    try:
        result = asyncio.run(
            run_embedded(
                config,
                out,
                workers=args.workers,
                data_dir=data_dir,
                device=args.device,
                progress=ProgressPrinter(console),
                on_log_ready=serve,
            )
        )
    finally:
        for server in api:
            server.close()
    wall = time.perf_counter() - started
    rows = round_rows(result.events)
    write_metrics(out, rows)
    write_plot(out, rows, f"fedbus {config.dataset} {config.clients} clients ({dp})")
    if result.final_model:
        save_checkpoint(
            out / "model.npz", decode_tensors(result.final_model), {"run_id": result.run_id, "model": config.model}
        )
    report = summary(run_id=result.run_id, config=config, rows=rows, reason=result.reason, wall_seconds=wall)
    (out / "summary.json").write_text(json.dumps(report, indent=2))
    _print_summary(console, report)
    return 0


def _print_summary(console: Console, report: dict[str, object]) -> None:
    table = Table(title="fedbus run summary")
    table.add_column("what")
    table.add_column("value", justify="right")
    accuracy = report["final_accuracy"]
    epsilon = report["epsilon"]
    rows = [
        ("run", str(report["run_id"])),
        ("stopped because", str(report["reason"])),
        ("rounds", str(report["rounds"])),
        ("final test accuracy", f"{accuracy:.4f}" if isinstance(accuracy, float) else "-"),
        ("epsilon (max over clients)", f"{epsilon:.3f}" if isinstance(epsilon, float) else "no DP"),
        ("delta", str(report["delta"])),
        ("bytes sent", f"{report['bytes_sent']:,}"),
        ("compression ratio", f"{report['compression_ratio']:.2f}x"),
        ("wall time", f"{report['wall_seconds']} s"),
    ]
    for what, value in rows:
        table.add_row(what, value)
    console.print(table)
