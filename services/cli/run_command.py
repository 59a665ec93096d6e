"""`fedbus run`: the embedded federated training, with progress, a summary table and files in --out."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import time
from pathlib import Path

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from contracts.config import RunConfig
from contracts.envelope import RecordedEvent
from contracts.errors import ConfigError
from contracts.events import ClientDeclined, RoundAggregated, RoundFailed, RoundStarted, RunCompleted, RunCreated
from contracts.run_state import RunState, state_from_created
from contracts.tensors import TensorMapping
from fedbus import DataRequest, Simulation, check_private, load_task
from ops.telemetry import exporter_names
from services.api.server import ApiServer
from services.api.settings import ApiSettings
from services.cli.export_command import write_final_model
from services.cli.options import client_folders, config_from, initial_weights_from
from services.cli.report import round_rows, summary, write_metrics, write_plot
from services.embedded import resumable_config, run_embedded
from workers.learning.training import central_test, check_device, check_weights, prepare


def preflight(
    config: RunConfig,
    data_dir: str | None,
    device: str = "cpu",
    clients: list[Path] | None = None,
    init_weights: TensorMapping | None = None,
) -> None:
    """Fail fast, before any process starts, on what only the learning code and the environment can check
    (the config itself was checked where it became a RunConfig): the device, that the task loads and, under
    DP, that Opacus can train its model, its central test data, and simulated clients' data. Clients with
    folders of their own (`clients`) are not read here: one whose folder is wrong declines, the others train.
    `init_weights` must fit the task's model."""
    exporter_names(os.environ)  # an unknown OTEL_TRACES_EXPORTER: one line, before the dataset is read
    check_device(device)
    task = load_task(config.task)
    if clients is None:
        simulation = Simulation(
            scheme=config.partition,
            clients=config.clients,
            index=0,
            seed=config.seed,
            limit=config.train_limit,
            dataset_dir=Path(data_dir) if data_dir else None,
        )
        prepare(config.task, DataRequest(simulation=simulation), private=config.privacy.enabled)
    elif config.privacy.enabled:
        check_private(task, task.build_model(seed=0))
    central_test(config.task, data_dir)
    if init_weights is not None:
        check_weights(init_weights, config.task)


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
            self._console.print(
                f"[yellow]  {escape(event.client_id)} declined round {event.round}: {escape(event.reason)}[/yellow]"
            )
        elif isinstance(event, RoundFailed):
            self._console.print(f"[red]  round {event.round} failed: {escape(event.reason)}[/red]")
        elif isinstance(event, RoundAggregated):
            row = self._run.summaries[-1]
            self._console.print(
                f"round {row.round:>3}  "
                + (f"accuracy {row.accuracy:.4f}  loss {row.loss:.4f}  " if row.central else "")
                + (f"federated accuracy {row.federated_accuracy:.4f}  " if row.federated_accuracy is not None else "")
                + (f"epsilon {row.epsilon:.3f}  " if row.epsilon is not None else "no DP  ")
                + (f"user epsilon {row.user_epsilon:.3f}  " if row.user_epsilon is not None else "")
                + f"updates {row.updates}  sent {row.bytes_sent / 1024:.1f} KiB  ratio {row.compression_ratio:.2f}x  "
                f"({row.aggregate_s:.1f}s aggregate)"
            )
        elif isinstance(event, RunCompleted):
            self._console.print(f"[bold]run completed: {escape(event.reason)} after {event.rounds} rounds[/bold]")


def run_command(args: argparse.Namespace) -> int:
    out: Path = args.out
    if args.resume is not None and args.init_from is not None:
        raise ConfigError("resume", "a resumed run goes on from its own latest model: drop --init-from")
    config = config_from(args) if args.resume is None else asyncio.run(resumable_config(out, args.resume))
    data_dir = args.data_dir or os.environ.get("FEDBUS_DATA_DIR")
    folders = client_folders(args.client_data, config.clients)
    init_weights = initial_weights_from(args.init_from)
    preflight(config, data_dir, args.device, folders, init_weights)
    console = Console(soft_wrap=True)  # progress lines are never wrapped, whatever the width of the output
    dp = f"DP epsilon<={config.privacy.epsilon} delta={config.privacy.delta}" if config.privacy.enabled else "no DP"
    console.print(
        f"[bold]fedbus run[/bold]: {config.task}, {config.clients} clients "
        f"({'own data folders' if folders else config.partition}), "
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
                client_data=folders,
                init_weights=init_weights,
                resume=args.resume,
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
    write_plot(out, rows, f"fedbus {config.task} {config.clients} clients ({dp})")
    write_final_model(f"sqlite:///{result.database}", result.run_id, out / "model.npz")
    report = summary(run_id=result.run_id, config=config, rows=rows, reason=result.reason, wall_seconds=wall)
    (out / "summary.json").write_text(json.dumps(report, indent=2))
    _print_summary(console, report)
    return 0


def _user_rows(report: dict[str, object]) -> list[tuple[str, str]]:
    if not report.get("user_dp"):
        return []
    epsilon = report["user_epsilon"]
    return [
        ("user-level epsilon", f"{epsilon:.3f}" if isinstance(epsilon, float) else "-"),
        ("user-level delta", str(report["user_delta"])),
    ]


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
        *_user_rows(report),
        ("bytes sent", f"{report['bytes_sent']:,}"),
        ("compression ratio", f"{report['compression_ratio']:.2f}x"),
        ("wall time", f"{report['wall_seconds']} s"),
    ]
    for what, value in rows:
        table.add_row(what, value)
    console.print(table)
