"""A deployed fedbus for one test: processes on a fresh vhost and database, a run config, and its log.

The test reads the outcome from PostgreSQL, the system of record, polling with generous deadlines; a
wait gives up early, with every process's output tail, when a process the test did not kill has died.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import subprocess
import time
import uuid
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from broker.topology import client_queue, queue_key
from contracts.events import Event
from persistence.sql_event_log import SqlEventLog
from tests.support.processes import FedbusProcess, Fleet, fedbus_cli

E = TypeVar("E")
REGISTERED = re.compile(r"registered as (c-[0-9a-f]+)")

# Small enough for two shared cores: ~750 MNIST samples per client, DP-SGD at epsilon 3.
SMALL_RUN: dict[str, Any] = {
    "task": "mnist_dp_cnn",
    "partition": "iid",
    "compression": "int8",
    "seed": 0,
    "train_limit": 3000,
    "eval_limit": 1000,
    "privacy": {"enabled": True, "epsilon": 3.0, "delta": 1e-5, "max_grad_norm": 1.0},
    "round": {"quorum": 1.0, "grace_s": 0.0, "timeout_s": 240.0, "local_epochs": 1, "batch_size": 64, "lr": 0.5},
}


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return f'"{value}"'
    return repr(value)


def run_toml(config: Mapping[str, Any]) -> str:
    """`config` (top-level keys plus `privacy` and `round` tables) as a `[run]` TOML document."""
    lines = ["[run]"] + [f"{k} = {_toml_value(v)}" for k, v in config.items() if not isinstance(v, Mapping)]
    for table, values in config.items():
        if isinstance(values, Mapping):
            lines += ["", f"[run.{table}]"] + [f"{k} = {_toml_value(v)}" for k, v in values.items()]
    return "\n".join(lines) + "\n"


def process_env(
    *, amqp_url: str, database_url: str, data_dir: str, config_path: Path, run_id: str, port: int, state_dir: Path
) -> dict[str, str]:
    """The environment every fedbus process of a test deployment shares."""
    return {
        **os.environ,
        "FEDBUS_AMQP_URL": amqp_url,
        "FEDBUS_DATABASE_URL": database_url,
        "FEDBUS_GRPC_BIND": f"127.0.0.1:{port}",
        "FEDBUS_GRPC_ADDRESS": f"127.0.0.1:{port}",
        "FEDBUS_ENROLLMENT_TOKEN": uuid.uuid4().hex,
        "FEDBUS_TOKEN_SECRET": uuid.uuid4().hex,
        "FEDBUS_RUN_CONFIG": str(config_path),
        "FEDBUS_RUN_ID": run_id,
        "FEDBUS_DATA_DIR": data_dir,
        "FEDBUS_STATE_DIR": str(state_dir),  # the clients' identities and ledgers, one folder per test
        "FEDBUS_DOWNLOAD": "0",
        "FEDBUS_WORKERS": "1",
        "OMP_NUM_THREADS": "1",
        "PYTHONUNBUFFERED": "1",
    }


def of_type(events: list[Event], kind: type[E]) -> list[E]:
    """The events of one type, in log order."""
    return [e for e in events if isinstance(e, kind)]


def outline(events: list[Event]) -> str:
    """A one-line account of a stream, e.g. `RunCreated, RoundStarted(r1), ...`, for failure messages."""
    return ", ".join(type(e).__name__ + (f"(r{e.round})" if hasattr(e, "round") else "") for e in events)


def unacknowledged(vhost: str, queue: str) -> int:
    """How many messages of `queue` a consumer holds without having settled them (rabbitmqctl)."""
    listing = subprocess.run(
        ["rabbitmqctl", "-q", "list_queues", "--no-table-headers", "-p", vhost, "name", "messages_unacknowledged"],
        check=True,
        capture_output=True,
        text=True,
        timeout=60,
    ).stdout
    counts = dict(line.split("\t") for line in listing.splitlines() if "\t" in line)
    return int(counts[queue])


@dataclass(slots=True, kw_only=True)
class Deployment:
    """One test's RabbitMQ vhost, PostgreSQL database, run id, run config and processes."""

    fleet: Fleet
    amqp_url: str
    vhost: str
    database_url: str
    run_id: str
    config_path: Path

    def upgrade_database(self) -> None:
        """`fedbus db upgrade`: creates the database and applies the migrations."""
        done = fedbus_cli("db", "upgrade", env=self.fleet.env)
        assert done.returncode == 0, f"fedbus db upgrade failed:\n{done.stdout}\n{done.stderr}"

    def write_config(self, *, clients: int, rounds: int, **overrides: Any) -> None:
        """Write the run config: SMALL_RUN with `overrides` (the `round` and `privacy` tables are merged).

        The clients claim one share each of the simulated data set (`any/N`, lock files in the state folder),
        as compose's identical replicas do; a restarted client takes its share back.
        """
        self.fleet.env["FEDBUS_SHARE"] = f"any/{clients}"
        self.fleet.env["FEDBUS_SHARE_CLAIMS"] = str(Path(self.fleet.env["FEDBUS_STATE_DIR"]) / "claims")
        overrides = {**overrides, "clients": clients, "rounds": rounds}
        config = {**SMALL_RUN, **{k: v for k, v in overrides.items() if k not in ("round", "privacy")}}
        for table in ("round", "privacy"):
            config[table] = {**SMALL_RUN[table], **overrides.get(table, {})}
        self.config_path.write_text(run_toml(config))

    def start_coordinator(self, name: str = "coordinator") -> FedbusProcess:
        """Start a coordinator and wait until its gRPC server listens (clients retry only briefly)."""
        process = self.fleet.start(name, "coordinator")
        self.wait_for_output(process, "coordinator serving gRPC")
        return process

    def start_aggregator(self, name: str) -> FedbusProcess:
        return self.fleet.start(name, "aggregator")

    def start_client(self, name: str) -> FedbusProcess:
        """A client with a stable instance name (its identity survives a coordinator restart)."""
        return self.fleet.start(name, "client", FEDBUS_INSTANCE_NAME=f"{self.run_id}-{name}")

    def client_queue(self, name: str) -> str:
        """The queue of the client process `name`, from the identity it keeps (call once it registered)."""
        instance = f"{self.run_id}-{name}"
        identity = json.loads((Path(self.fleet.env["FEDBUS_STATE_DIR"]) / f"identity-{instance}.json").read_text())
        return client_queue(identity["client_id"], queue_key(identity["client_secret"])).name

    def client_id(self, process: FedbusProcess) -> str:
        """The id the coordinator gave this client (from its `registered as` log line)."""
        line = self.wait_for_output(process, "registered as")
        found = REGISTERED.search(line)
        assert found, line
        return found.group(1)

    def wait_for_output(self, process: FedbusProcess, text: str, within: float = 120.0) -> str:
        """The first output line of `process` holding `text`; fails early if the process exits."""
        deadline = time.monotonic() + within
        while True:
            for line in process.output().splitlines():
                if text in line:
                    return line
            if process.returncode is not None or time.monotonic() >= deadline:
                raise AssertionError(f"{process.name} never printed {text!r}:\n{self.fleet.tails()}")
            time.sleep(0.1)

    @asynccontextmanager
    async def run_log(self) -> AsyncIterator[RunLog]:
        """The run's stream in PostgreSQL, read by the test."""
        event_log = await SqlEventLog.connect(self.database_url, create=False)
        try:
            yield RunLog(event_log, self.run_id, self.fleet)
        finally:
            await event_log.close()


@dataclass(slots=True)
class RunLog:
    event_log: SqlEventLog
    run_id: str
    fleet: Fleet

    async def events(self) -> list[Event]:
        """Every event of the run's stream, in stream order."""
        return [r.envelope.event for r in await self.event_log.read_stream(f"run:{self.run_id}")]

    async def until(self, condition: Callable[[list[Event]], bool], *, what: str, within: float = 240.0) -> list[Event]:
        """The run's events once `condition` holds; AssertionError (with the processes' output) otherwise."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + within
        while True:
            events = await self.events()
            if condition(events):
                return events
            died = self.fleet.unexpected_exits()
            if died or loop.time() >= deadline:
                why = "; ".join(died) or f"not within {within:.0f}s"
                raise AssertionError(f"waiting for {what}: {why}\nlog: {outline(events)}\n{self.fleet.tails()}")
            await asyncio.sleep(0.25)
