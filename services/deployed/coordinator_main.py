"""`fedbus coordinator`: the control plane over RabbitMQ, PostgreSQL and gRPC."""

from __future__ import annotations

import asyncio
import contextlib
import logging

from broker.rabbitmq import RabbitBroker
from contracts.config import RunConfig
from contracts.envelope import Envelope
from ops.metrics import serve_metrics
from ops.settings import Settings
from ops.telemetry import shutdown_telemetry
from persistence.sql_event_log import SqlEventLog
from services.coordinator.server import start_grpc_server
from services.coordinator.service import Coordinator
from services.coordinator.tokens import TokenAuthority
from services.deployed.observability import observe
from services.relay import OutboxRelay

log = logging.getLogger("fedbus.coordinator")


async def serve(settings: Settings, stop: asyncio.Event, run_config: RunConfig | None = None) -> None:
    settings.require("ENROLLMENT_TOKEN", "TOKEN_SECRET")
    tokens = TokenAuthority(secret=settings.token_secret.encode(), enrollment_token=settings.enrollment_token)
    event_log = await SqlEventLog.connect(settings.database_url, create=False)
    observe("coordinator", settings.instance_name, database=True)
    broker = await RabbitBroker.connect(settings.amqp_url, connect_attempts=30)
    coordinator = Coordinator(event_log, partition_count=settings.partitions)
    serve_metrics(coordinator.metrics, settings.metrics_port)
    await coordinator.recover()
    relay = OutboxRelay(event_log, broker)
    server, port = await start_grpc_server(
        coordinator, tokens, settings.grpc_bind, tls=settings.server_tls, max_concurrent_uploads=settings.max_uploads
    )
    log.info("coordinator serving gRPC on port %s", port)

    async def on_event(envelope: Envelope) -> None:
        await coordinator.advance(envelope.run_id)
        relay.wake()

    consumer = await broker.consume("fedbus.coordinator", on_event)
    tasks = [
        asyncio.create_task(relay.run_forever()),
        asyncio.create_task(coordinator.tick_forever()),
        asyncio.create_task(_wake_relay(coordinator, relay)),
    ]
    if run_config is not None:
        tasks.append(asyncio.create_task(_start_run(coordinator, settings, run_config)))
    try:
        await stop.wait()
        log.info("coordinator draining")
    finally:
        await server.stop(grace=5.0)
        await consumer.cancel()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        with contextlib.suppress(Exception):
            await relay.relay_once()
        await broker.close()
        await event_log.close()
        shutdown_telemetry()


async def _wake_relay(coordinator: Coordinator, relay: OutboxRelay) -> None:
    while True:
        await coordinator.changed.wait()
        coordinator.changed.clear()
        relay.wake()


async def _start_run(coordinator: Coordinator, settings: Settings, config: RunConfig) -> None:
    """Start the configured run once enough clients registered, unless the log already has it."""
    if settings.run_id and settings.run_id in coordinator.run_ids():
        log.info("run %s already in the log: continuing it", settings.run_id)
        return
    if not settings.run_id and coordinator.run_ids():
        log.info("runs already in the log: not starting another")
        return
    wanted = settings.wait_clients or config.clients
    while coordinator.registered_clients() < wanted:  # noqa: ASYNC110 - registrations arrive over gRPC; polling is enough
        await asyncio.sleep(0.2)
    run_id = await coordinator.create_run(config, run_id=settings.run_id)
    log.info("run %s created with %s clients registered", run_id, coordinator.registered_clients())
