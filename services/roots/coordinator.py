"""The coordinator's composition root: `build` wires it to an event log, a broker and a gRPC server.

`fedbus coordinator` builds it from settings (PostgreSQL and RabbitMQ URLs); `fedbus run` passes its own
SQLite log and in-memory broker. Either way the same wake-ups: an event on `fedbus.coordinator` (a model,
an aggregation) advances its run, a tick closes rounds at deadlines and grace ends, and every append through
its log wakes the outbox relay. The relay also polls, for what other processes append (the aggregators and
the API on PostgreSQL): every 50 ms unless `relay_poll_s` says otherwise (`fedbus run`, where every writer
shares the one log, polls once a second).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from dataclasses import dataclass, field

import grpc

from broker.broker_url import Broker
from broker.topology import COORDINATOR_QUEUE
from contracts.config import RunConfig
from contracts.envelope import Envelope
from contracts.ports import Clock, Consumption, EventLog
from ops.lifecycle import stop_tasks
from ops.metrics import serve_metrics
from ops.settings import Settings
from ops.telemetry import shutdown_telemetry
from services.coordinator.coordinator import Coordinator
from services.coordinator.federation_servicer import UploadLimits
from services.coordinator.grpc_server import start_grpc_server
from services.coordinator.tokens import TokenAuthority
from services.relay import OutboxRelay
from services.roots.adapters import Closable, close_owned, log_and_broker
from services.roots.observability import observe

log = logging.getLogger("fedbus.coordinator")


@dataclass(slots=True, kw_only=True)
class CoordinatorApp:
    """A built coordinator: `start` recovers from the log and serves; `stop` drains and closes what it opened."""

    settings: Settings
    coordinator: Coordinator
    relay: OutboxRelay
    tokens: TokenAuthority
    log: EventLog
    broker: Broker
    owns: tuple[Closable, ...] = ()  # the adapters `build` opened (closed by `stop`)
    port: int = 0
    _server: grpc.aio.Server | None = None
    _consumer: Consumption | None = None
    _tasks: list[asyncio.Task[None]] = field(default_factory=list)
    _unlisten: Callable[[], None] = lambda: None  # stops the log waking the relay

    async def start(self) -> None:
        await self.coordinator.recover()
        self._server, self.port = await start_grpc_server(
            self.coordinator,
            self.tokens,
            self.settings.grpc_bind,
            tls=self.settings.server_tls,
            uploads=UploadLimits(
                max_concurrent=self.settings.max_uploads,
                idle_s=self.settings.upload_idle_s,
                max_s=self.settings.upload_max_s,
            ),
        )
        log.info("coordinator serving gRPC on port %s", self.port)
        self._consumer = await self.broker.consume(COORDINATOR_QUEUE, self._on_event)
        self._tasks += [
            asyncio.create_task(self.relay.run_forever()),
            asyncio.create_task(self.coordinator.tick_forever()),
        ]

    async def create_run(self, config: RunConfig, run_id: str | None = None) -> str:
        return await self.coordinator.create_run(config, run_id)

    async def stop(self, grace: float = 5.0) -> None:
        if self._server is not None:
            await self._server.stop(grace=grace)
        if self._consumer is not None:
            await self._consumer.cancel()
        self.relay.stop()
        self.coordinator.stop_ticking()
        await stop_tasks(self._tasks, grace)
        with contextlib.suppress(Exception):
            await self.relay.relay_once()
        self._unlisten()
        await close_owned(self.owns)

    async def _on_event(self, envelope: Envelope) -> None:
        await self.coordinator.advance(envelope.run_id)


async def build(
    settings: Settings,
    *,
    log: EventLog | None = None,
    broker: Broker | None = None,
    clock: Clock | None = None,
    tokens: TokenAuthority | None = None,
    relay_poll_s: float = 0.05,
) -> CoordinatorApp:
    """The coordinator for `settings`; adapters given here are used as they are (and not closed by `stop`)."""
    if tokens is None:
        settings.require("ENROLLMENT_TOKEN", "TOKEN_SECRET")
        tokens = TokenAuthority(secret=settings.token_secret.encode(), enrollment_token=settings.enrollment_token)
    log, broker, owns = await log_and_broker(settings, log, broker)
    coordinator = Coordinator(log, clock=clock)
    relay = OutboxRelay(log, broker, interval=relay_poll_s)
    return CoordinatorApp(
        settings=settings,
        coordinator=coordinator,
        relay=relay,
        tokens=tokens,
        log=log,
        broker=broker,
        owns=owns,
        _unlisten=log.on_append(relay.wake),
    )


async def serve(settings: Settings, stop: asyncio.Event, run_config: RunConfig | None = None) -> None:
    """`fedbus coordinator`: serve until `stop`; with `run_config`, start that run once enough clients registered."""
    observe("coordinator", settings.instance_name, database=True)
    app = await build(settings)
    serve_metrics(app.coordinator.metrics, settings.metrics_port)
    await app.start()
    starter = asyncio.create_task(_start_run(app, run_config)) if run_config is not None else None
    try:
        await stop.wait()
        log.info("coordinator draining")
    finally:
        if starter is not None:
            starter.cancel()
            await asyncio.gather(starter, return_exceptions=True)
        await app.stop()
        shutdown_telemetry()


async def _start_run(app: CoordinatorApp, config: RunConfig) -> None:
    """Start the configured run once enough clients registered, unless the log already has it."""
    settings, coordinator = app.settings, app.coordinator
    if settings.run_id and settings.run_id in coordinator.runs.run_ids():
        log.info("run %s already in the log: continuing it", settings.run_id)
        return
    if not settings.run_id and coordinator.runs.run_ids():
        log.info("runs already in the log: not starting another")
        return
    wanted = settings.wait_clients or config.clients
    while coordinator.clients.active_count() < wanted:  # noqa: ASYNC110 - registrations arrive over gRPC; polling is enough
        await asyncio.sleep(0.2)
    run_id = await app.create_run(config, run_id=settings.run_id)
    log.info("run %s created with %s clients registered", run_id, coordinator.clients.active_count())
