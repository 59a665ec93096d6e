"""The client's composition root: register with the enrollment token, then train whenever its queue says so.

`fedbus client` builds it from settings with a process pool of its own; `fedbus run` builds one per simulated
client on a shared pool and broker, with its own transports and trainers where the benchmarks need them.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
from concurrent.futures import Executor
from dataclasses import dataclass

from broker.broker_url import Broker, open_broker

from contracts.ports import Clock, Consumption
from contracts.uploads import ClientCapabilities
from ops.clock import SystemClock
from ops.settings import Settings
from ops.telemetry import shutdown_telemetry
from services.roots.observability import observe
from services.roots.pool import process_pool, warm_up
from workers.client.ledger_store import LedgerStore
from workers.client.trainer import PoolTrainer
from workers.client.transport import FederationClient
from workers.client.worker import ClientWorker
from workers.learning.training import check_device

log = logging.getLogger("fedbus.client")


@dataclass(slots=True, kw_only=True)
class ClientApp:
    worker: ClientWorker
    transport: FederationClient
    broker: Broker
    owns_broker: bool
    _consumer: Consumption | None = None

    @property
    def client_id(self) -> str:
        return self.worker.client_id

    async def start(self) -> None:
        queue = await self.broker.ensure_client_queue(self.client_id)
        self._consumer = await self.broker.consume(queue, self.worker.handle, prefetch=1)

    async def stop(self) -> None:
        if self._consumer is not None:
            await self._consumer.cancel()
        if self.owns_broker:
            await self.broker.close()
        await self.transport.close()


async def build(
    settings: Settings,
    *,
    executor: Executor,
    broker: Broker | None = None,
    clock: Clock | None = None,
    transport: FederationClient | None = None,
    trainer: PoolTrainer | None = None,
    keep_ledgers: bool = True,
) -> ClientApp:
    """Register (the identity of `settings.instance_name`) and wire the worker; the queue is consumed by `start`.

    Ledgers are kept in `settings.state_dir` unless `keep_ledgers` is off (simulated clients of `fedbus run`).
    """
    settings.require("ENROLLMENT_TOKEN")
    # Generous retries: a coordinator restart or a slow start must not make the client give up or drop an update.
    transport = transport or FederationClient(settings.grpc_address, tls=settings.client_tls, attempts=12)
    capabilities = ClientCapabilities(device=settings.device, cores=os.cpu_count() or 1, hostname=socket.gethostname())
    registration = await transport.register(settings.enrollment_token, capabilities, settings.instance_name)
    log.info(
        "registered as %s (partition %s/%s)",
        registration.client_id,
        registration.partition_index,
        registration.partition_count,
    )
    owns_broker = broker is None
    if broker is None:
        # The coordinator declared the shared topology before serving gRPC; a client may only declare its own queue.
        broker = await open_broker(settings.amqp_url, connect_attempts=30, declare_topology=False)
    worker = ClientWorker(
        transport,
        trainer or PoolTrainer(executor),
        registration,
        data_dir=settings.data_dir,
        clock=clock or SystemClock(),
        ledgers=LedgerStore(settings.state_dir, registration.client_id) if keep_ledgers else None,
    )
    return ClientApp(worker=worker, transport=transport, broker=broker, owns_broker=owns_broker)


async def serve(settings: Settings, stop: asyncio.Event) -> None:
    """`fedbus client`: train until `stop`, then drain."""
    settings.require("ENROLLMENT_TOKEN")
    check_device(settings.device)
    observe("client", settings.instance_name)
    # The training processes start before registering: a registered client is one that can train at once.
    with process_pool(settings.workers, settings.device) as executor:
        await asyncio.to_thread(warm_up, executor, settings.workers)
        app = await build(settings, executor=executor)
        await app.start()
        try:
            await stop.wait()
            log.info("client %s draining", app.client_id)
        finally:
            await app.stop()
            shutdown_telemetry()
