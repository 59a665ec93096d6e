"""The composition root of `fedbus run`: the deployed code wired to an in-memory broker, a SQLite log
and the real gRPC server on loopback, with training in a process pool (one torch thread per process)."""

from __future__ import annotations

import asyncio
import os
import socket
from collections.abc import Callable
from concurrent.futures import Executor
from dataclasses import dataclass
from pathlib import Path

from broker.in_memory_broker import InMemoryBroker
from contracts.config import RunConfig
from contracts.envelope import Envelope, RecordedEvent
from contracts.models import ClientCapabilities
from contracts.ports import Handler
from ops.clock import SystemClock
from persistence.sql_event_log import SqlEventLog
from services.coordinator.server import start_grpc_server
from services.coordinator.service import Coordinator
from services.coordinator.tokens import TokenAuthority
from services.deployed.pool import process_pool, warm_up
from services.relay import OutboxRelay
from workers.aggregator.evaluator import PoolEvaluator
from workers.aggregator.worker import AggregatorWorker
from workers.client.trainer import PoolTrainer
from workers.client.transport import FederationClient
from workers.client.worker import ClientWorker

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
    log = await SqlEventLog.connect(f"sqlite+aiosqlite:///{database}")
    if on_log_ready is not None:
        on_log_ready(database)  # e.g. `--serve`: the API reads the same SQLite log while the run writes it
    broker = InMemoryBroker()
    tokens = TokenAuthority.generate()
    coordinator = Coordinator(log, partition_count=config.clients, clock=clock)
    relay = OutboxRelay(log, broker)
    tasks: list[asyncio.Task[None]] = []
    transports: list[FederationClient] = []
    server, port = await start_grpc_server(coordinator, tokens, "127.0.0.1:0")
    try:
        aggregator = AggregatorWorker(log, PoolEvaluator(executor, data_dir))
        await broker.consume("fedbus.aggregator", aggregator.handle)
        await broker.consume("fedbus.coordinator", _advancing(coordinator, relay))
        for index in range(config.clients):
            transport = transport_for(index, f"127.0.0.1:{port}")
            transports.append(transport)
            registration = await transport.register(
                tokens.enrollment_token,
                ClientCapabilities(device="cpu", cores=1, hostname=socket.gethostname()),
                instance_name=f"embedded-{index}",
            )
            worker = ClientWorker(transport, trainer_for(index, executor), registration, data_dir=data_dir, clock=clock)
            queue = await broker.ensure_client_queue(registration.client_id)
            await broker.consume(queue, worker.handle)
        tasks.append(asyncio.create_task(relay.run_forever()))
        tasks.append(asyncio.create_task(coordinator.tick_forever()))
        tasks.append(asyncio.create_task(_wake_on_change(coordinator, relay)))
        run_id = await coordinator.create_run(config)
        relay.wake()
        events = await _follow(log, coordinator, run_id, progress)
        state = coordinator.run_state(run_id)
        latest = state.latest_model
        final_model = await log.get_blob(latest[1]) if latest else b""
        return EmbeddedResult(
            run_id=run_id, reason=state.completed or "", database=database, events=events, final_model=final_model
        )
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await broker.close()
        for transport in transports:
            await transport.close()
        await server.stop(grace=1.0)
        await log.close()


def _advancing(coordinator: Coordinator, relay: OutboxRelay) -> Handler:
    async def handle(envelope: Envelope) -> None:
        await coordinator.advance(envelope.run_id)
        relay.wake()

    return handle


async def _wake_on_change(coordinator: Coordinator, relay: OutboxRelay) -> None:
    while True:
        await coordinator.changed.wait()
        coordinator.changed.clear()
        relay.wake()


async def _follow(
    log: SqlEventLog, coordinator: Coordinator, run_id: str, progress: Progress | None
) -> list[RecordedEvent]:
    events: list[RecordedEvent] = []
    version = 0
    while True:
        batch = await log.read_stream(f"run:{run_id}", after_version=version)
        for recorded in batch:
            events.append(recorded)
            if progress is not None:
                progress(recorded)
            version = recorded.version
        if coordinator.run_state(run_id).completed and not batch:
            return events
        await asyncio.sleep(0.1)
