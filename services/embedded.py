"""`fedbus run`: the deployed roles built by their own composition roots (services/roots), given an
in-memory broker, a SQLite log and a shared process pool (one torch thread per process); gRPC is real, on
loopback."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import os
import shutil
from collections.abc import Callable, Sequence
from concurrent.futures import Executor
from dataclasses import dataclass
from pathlib import Path

from broker.in_memory_broker import InMemoryBroker
from broker.topology import build_topology
from contracts.config import RunConfig
from contracts.envelope import RecordedEvent
from contracts.errors import ConfigError
from contracts.ports import EventLog
from contracts.run_state import fold_run
from contracts.streams import run_stream
from contracts.tensor_codec import encode_with_manifest
from contracts.tensors import TensorMapping
from ops.clock import SystemClock
from ops.settings import Settings, Share
from ops.telemetry import flush_telemetry
from persistence.event_log_url import open_event_log
from services.coordinator.coordinator import Coordinator
from services.coordinator.tokens import TokenAuthority
from services.roots import aggregator as aggregator_root
from services.roots import client as client_root
from services.roots import coordinator as coordinator_root
from services.roots.aggregator import AggregatorApp
from services.roots.client import ClientApp
from services.roots.coordinator import CoordinatorApp
from services.roots.observability import observe_embedded
from services.roots.pool import process_pool, warm_up
from workers.client.trainer import PoolTrainer
from workers.client.transport import FederationClient

Progress = Callable[[RecordedEvent], None]
# In one process nobody reads the broker's rings through a management UI: no JSON copies of every event.
EMBEDDED_TOPOLOGY = build_topology(inspect_json=False)
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


async def run_embedded(
    config: RunConfig,
    out: Path,
    *,
    workers: int | None = None,
    data_dir: str | None = None,
    client_data: Sequence[Path] | None = None,
    init_weights: TensorMapping | None = None,
    resume: str | None = None,
    device: str = "cpu",
    progress: Progress | None = None,
    on_log_ready: Callable[[Path], None] | None = None,
) -> EmbeddedResult:
    """Run one federated training to completion in a process pool of its own; returns what the log recorded.

    Traced like the deployed roles (OTEL_* variables): the spans still buffered are exported before it returns.
    """
    workers = workers or max(1, min(os.cpu_count() or 1, config.clients))
    observe_embedded()
    try:
        with process_pool(workers, device) as executor:
            await asyncio.to_thread(warm_up, executor, workers)
            return await federate(
                config,
                out,
                executor,
                data_dir=data_dir,
                client_data=client_data,
                init_weights=init_weights,
                resume=resume,
                progress=progress,
                on_log_ready=on_log_ready,
            )
    finally:
        await asyncio.to_thread(flush_telemetry)


async def federate(
    config: RunConfig,
    out: Path,
    executor: Executor,
    *,
    data_dir: str | None = None,
    client_data: Sequence[Path] | None = None,
    init_weights: TensorMapping | None = None,
    resume: str | None = None,
    progress: Progress | None = None,
    on_log_ready: Callable[[Path], None] | None = None,
    trainer_for: TrainerFactory = pool_trainer,
    transport_for: TransportFactory = plain_transport,
) -> EmbeddedResult:
    """One federated training on a given pool (shared by back-to-back runs, e.g. the benchmarks).

    Client i trains on `client_data[i]` when given, else on its simulated share i/clients of the task's data set.
    With `init_weights` the run starts from them (its RunConfig's init_model) instead of the seeded model.
    The clients keep their identities and privacy ledgers in `out/state`; `resume` names a run of the log in
    `out` to take up where it stopped instead (`config` is then the run's own, from its RunCreated), each
    client's spend carried over."""
    out.mkdir(parents=True, exist_ok=True)
    database, state_dir = out / "fedbus.db", out / "state"
    if resume is None:
        database.unlink(missing_ok=True)
        shutil.rmtree(state_dir, ignore_errors=True)
    elif not database.is_file():
        raise ConfigError("resume", f"no event log {database} to resume run {resume} from")
    clock = SystemClock()
    log = await open_event_log(f"sqlite:///{database}")
    if on_log_ready is not None:
        on_log_ready(database)  # e.g. `--serve`: the API reads the same SQLite log while the run writes it
    broker = InMemoryBroker(topology=EMBEDDED_TOPOLOGY)
    tokens = TokenAuthority.generate()
    apps: list[CoordinatorApp | AggregatorApp | ClientApp] = []
    try:
        if resume is not None:
            config = await _resumable(log, resume)
        settings = dataclasses.replace(embedded_settings(data_dir, tokens), state_dir=state_dir)
        taken_over = clock.now()  # an attempt started from here on is this process's own (decide.resume)
        # Every writer shares this one log, so its appends wake the relay; the poll is only a safety net.
        coordinator = await coordinator_root.build(
            settings, log=log, broker=broker, clock=clock, tokens=tokens, relay_poll_s=1.0
        )
        apps.append(coordinator)
        await coordinator.start()
        aggregator = await aggregator_root.build(settings, executor=executor, log=log, broker=broker)
        apps.append(aggregator)
        await aggregator.start()
        address = f"127.0.0.1:{coordinator.port}"
        for index in range(config.clients):
            client = await client_root.build(
                dataclasses.replace(
                    settings,
                    grpc_address=address,
                    instance_name=f"embedded-{index}",
                    client_data=client_data[index] if client_data else None,
                    share=None if client_data else Share(index, config.clients),
                ),
                executor=executor,
                broker=broker,
                clock=clock,
                transport=transport_for(index, address),
                trainer=trainer_for(index, executor),
            )
            apps.append(client)
            await client.start()
        if resume is not None:
            run_id = resume
            await coordinator.coordinator.resume(run_id, since=taken_over)
        else:
            if init_weights is not None:
                config = dataclasses.replace(config, init_model=await put_model(log, init_weights))
            run_id = await coordinator.create_run(config)
        events = await _follow(log, coordinator.coordinator, run_id, progress)
        state = coordinator.coordinator.run_state(run_id)
        return EmbeddedResult(run_id=run_id, reason=state.completed or "", database=database, events=events)
    finally:
        for app in reversed(apps):
            await (app.stop(grace=1.0) if isinstance(app, CoordinatorApp) else app.stop())
        await broker.close()
        await log.close()


async def put_model(log: EventLog, weights: TensorMapping) -> str:
    """Store `weights` as a model blob in `log`; its digest, for a RunConfig's init_model."""
    data, manifest = encode_with_manifest(weights)
    await log.put_blob(manifest.digest, "model", data)
    return manifest.digest


async def resumable_config(out: Path, run_id: str) -> RunConfig:
    """The config of `run_id` in the event log of `out` (a `fedbus run --out`), if it can be resumed."""
    database = out / "fedbus.db"
    if not database.is_file():
        raise ConfigError("resume", f"no event log {database} to resume run {run_id} from")
    log = await open_event_log(f"sqlite:///{database}")
    try:
        return await _resumable(log, run_id)
    finally:
        await log.close()


async def _resumable(log: EventLog, run_id: str) -> RunConfig:
    """The config of `run_id` in `log`; ConfigError("resume") when it is not there or already ended."""
    history = await log.read_stream(run_stream(run_id))
    if not history:
        raise ConfigError("resume", f"no run {run_id} in this event log")
    state = fold_run(history)
    if state.completed:
        raise ConfigError("resume", f"run {run_id} already ended ({state.completed}): nothing to resume")
    return state.config


def embedded_settings(data_dir: str | None, tokens: TokenAuthority) -> Settings:
    """The deployed roles' settings for one machine: gRPC on a free loopback port."""
    env = {
        "FEDBUS_GRPC_BIND": "127.0.0.1:0",
        "FEDBUS_ENROLLMENT_TOKEN": tokens.enrollment_token,
        "FEDBUS_DATA_DIR": data_dir or "",
    }
    return Settings.from_env(env)


async def _follow(
    log: EventLog, coordinator: Coordinator, run_id: str, progress: Progress | None
) -> list[RecordedEvent]:
    """The run's events as they are appended (read after each append through `log`), until it completes."""
    events: list[RecordedEvent] = []
    version = 0
    appended = asyncio.Event()
    unlisten = log.on_append(appended.set)
    try:
        while True:
            appended.clear()
            batch = await log.read_stream(run_stream(run_id), after_version=version)
            for recorded in batch:
                events.append(recorded)
                if progress is not None:
                    progress(recorded)
                version = recorded.version
            if coordinator.run_state(run_id).completed:
                if not batch:
                    return events
                continue  # read once more, not after a wait: what else the ending appended
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(appended.wait(), 1.0)
    finally:
        unlisten()
