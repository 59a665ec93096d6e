"""`fedbus client`: registers with the enrollment token, then trains whenever its queue says so."""

from __future__ import annotations

import asyncio
import logging
import os
import socket

from broker.rabbitmq import RabbitBroker
from contracts.models import ClientCapabilities
from ops.clock import SystemClock
from ops.settings import Settings
from ops.telemetry import shutdown_telemetry
from services.deployed.observability import observe
from services.deployed.pool import process_pool, warm_up
from workers.client.ledger_store import LedgerStore
from workers.client.trainer import PoolTrainer
from workers.client.transport import FederationClient
from workers.client.worker import ClientWorker
from workers.learning.training import check_device

log = logging.getLogger("fedbus.client")


async def serve(settings: Settings, stop: asyncio.Event) -> None:
    settings.require("ENROLLMENT_TOKEN")
    check_device(settings.device)
    observe("client", settings.instance_name)
    # Generous retries: a coordinator restart or a slow start must not make the client give up or drop an update.
    transport = FederationClient(settings.grpc_address, tls=settings.client_tls, attempts=12)
    capabilities = ClientCapabilities(device=settings.device, cores=os.cpu_count() or 1, hostname=socket.gethostname())
    # The training processes start before registering: a registered client is one that can train at once.
    with process_pool(settings.workers, settings.device) as executor:
        await asyncio.to_thread(warm_up, executor, settings.workers)
        registration = await transport.register(settings.enrollment_token, capabilities, settings.instance_name)
        log.info(
            "registered as %s (partition %s/%s)",
            registration.client_id,
            registration.partition_index,
            registration.partition_count,
        )
        # The coordinator declared the shared topology before serving gRPC; a client may only declare its own queue.
        broker = await RabbitBroker.connect(settings.amqp_url, connect_attempts=30, declare_topology=False)
        ledgers = LedgerStore(settings.state_dir, registration.client_id)
        worker = ClientWorker(
            transport,
            PoolTrainer(executor),
            registration,
            data_dir=settings.data_dir,
            clock=SystemClock(),
            ledgers=ledgers,
        )
        queue = await broker.ensure_client_queue(registration.client_id)
        consumer = await broker.consume(queue, worker.handle, prefetch=1)
        try:
            await stop.wait()
            log.info("client %s draining", registration.client_id)
        finally:
            await consumer.cancel()
            await broker.close()
            await transport.close()
            shutdown_telemetry()
