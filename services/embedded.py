"""`fedbus run`: the deployed roles built by their own composition roots (services/roots), given an
in-memory broker, a SQLite log and a shared process pool (one torch thread per process); gRPC is real, on
loopback."""

from __future__ import annotations

import asyncio
import dataclasses
import os
from collections.abc import Callable
from concurrent.futures import Executor
from dataclasses import dataclass
from pathlib import Path

from persistence.event_log_url import open_event_log

from broker.in_memory_broker import InMemoryBroker
from contracts.config import RunConfig
from contracts.envelope import RecordedEvent
from contracts.ports import EventLog
from contracts.streams import run_stream
from ops.clock import SystemClock
from ops.settings import Settings
from services.coordinator.coordinator import Coordinator
from services.coordinator.tokens import TokenAuthority
from services.roots import aggregator as aggregator_root
from services.roots import client as client_root
from services.roots import coordinator as coordinator_root
from services.roots.aggregator import AggregatorApp
from services.roots.client import ClientApp
from services.roots.coordinator import CoordinatorApp
from services.roots.pool import process_pool, warm_up
from workers.client.trainer import PoolTrainer
from workers.client.transport import FederationClient

Progress = Callable[[RecordedEvent], None]
# Seams for the benchmarks (slow devices, throttled links); the defaults are what `fedbus run` uses.
TrainerFactory = Callable[[int, Executor], PoolTrainer]
TransportFactory = Callable[[int, str], FederationClient]


def pool_trainer(_index: int, executor: Executor) -> PoolTrainer:
    return PoolTrainer(executor)


def plain_transport(_index: int, address: str) -> FederationClient:
    return FederationClient(address)


@dataclass(frozen=True, slots=True, kw_only=True)
class EmbeddedResult:
    run_id: str
    reason: str
    database: Path
    events: list[RecordedEvent]
    final_model: bytes


async def run_embedded(
    config: RunConfig,
    out: Path,
    *,
    workers: int | None = None,
    data_dir: str | None = None,
    device: str = "cpu",
    progress: Progress | None = None,
    on_log_ready: Callable[[Path], None] | None = None,
) -> EmbeddedResult:
    """Run one federated training to completion in a process pool of its own; returns what the log recorded."""
    workers = workers or max(1, min(os.cpu_count() or 1, config.clients))
    with process_pool(workers, device) as executor:
        await asyncio.to_thread(warm_up, executor, workers)
        return await federate(config, out, executor, data_dir=data_dir, progress=progress, on_log_ready=on_log_ready)


async def federate(
    config: RunConfig,
    out: Path,
    executor: Executor,
    *,
    data_dir: str | None = None,
    progress: Progress | None = None,
    on_log_ready: Callable[[Path], None] | None = None,
    trainer_for: TrainerFactory = pool_trainer,
    transport_for: TransportFactory = plain_transport,
) -> EmbeddedResult:
    """One federated training on a given pool (shared by back-to-back runs, e.g. the benchmarks)."""
    out.mkdir(parents=True, exist_ok=True)
    database = out / "fedbus.db"
    database.unlink(missing_ok=True)
    clock = SystemClock()
    log = await open_event_log(f"sqlite:///{database}")
    if on_log_ready is not None:
        on_log_ready(database)  # e.g. `--serve`: the API reads the same SQLite log while the run writes it
    broker = InMemoryBroker()
    tokens = TokenAuthority.generate()
    settings = embedded_settings(config, data_dir, tokens)
    apps: list[CoordinatorApp | AggregatorApp | ClientApp] = []
    try:
        coordinator = await coordinator_root.build(settings, log=log, broker=broker, clock=clock, tokens=tokens)
        apps.append(coordinator)
        await coordinator.start()
        aggregator = await aggregator_root.build(settings, executor=executor, log=log, broker=broker)
        apps.append(aggregator)
        await aggregator.start()
        address = f"127.0.0.1:{coordinator.port}"
        for index in range(config.clients):
            client = await client_root.build(
                dataclasses.replace(settings, grpc_address=address, instance_name=f"embedded-{index}"),
                executor=executor,
                broker=broker,
                clock=clock,
                transport=transport_for(index, address),
                trainer=trainer_for(index, executor),
                keep_ledgers=False,
            )
            apps.append(client)
            await client.start()
        run_id = await coordinator.create_run(config)
        events = await _follow(log, coordinator.coordinator, run_id, progress)
        state = coordinator.coordinator.run_state(run_id)
        latest = state.latest_model
        final_model = await log.get_blob(latest[1]) if latest else b""
        return EmbeddedResult(
            run_id=run_id, reason=state.completed or "", database=database, events=events, final_model=final_model
        )
    finally:
        for app in reversed(apps):
            await (app.stop(grace=1.0) if isinstance(app, CoordinatorApp) else app.stop())
        await broker.close()
        await log.close()


def embedded_settings(config: RunConfig, data_dir: str | None, tokens: TokenAuthority) -> Settings:
    """The deployed roles' settings for one machine: gRPC on a free loopback port, one partition per client."""
    env = {
        "FEDBUS_GRPC_BIND": "127.0.0.1:0",
        "FEDBUS_PARTITIONS": str(config.clients),
        "FEDBUS_ENROLLMENT_TOKEN": tokens.enrollment_token,
        "FEDBUS_DATA_DIR": data_dir or "",
    }
    return Settings.from_env(env)


async def _follow(
    log: EventLog, coordinator: Coordinator, run_id: str, progress: Progress | None
) -> list[RecordedEvent]:
    events: list[RecordedEvent] = []
    version = 0
    while True:
        batch = await log.read_stream(run_stream(run_id), after_version=version)
        for recorded in batch:
            events.append(recorded)
            if progress is not None:
                progress(recorded)
            version = recorded.version
        if coordinator.run_state(run_id).completed and not batch:
            return events
        await asyncio.sleep(0.1)
