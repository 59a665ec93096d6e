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
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import grpc

from broker.broker_url import Broker, open_broker
from broker.connection import while_reconnecting
from broker.topology import queue_key
from contracts.errors import ConfigError
from contracts.ports import Clock, Consumption
from contracts.uploads import ClientCapabilities
from ops.clock import SystemClock
from ops.settings import Settings
from ops.telemetry import shutdown_telemetry
from services.roots.observability import observe
from services.roots.pool import process_pool, warm_up
from workers.client.identity_store import IdentityStore
from workers.client.ledger_store import LedgerStore
from workers.client.share_claim import ShareClaim, claim_share
from workers.client.transport import FederationClient, RegistrationFailed

if TYPE_CHECKING:  # the worker and the trainer import torch and Opacus: `build` imports them once registered
    from workers.client.trainer import PoolTrainer
    from workers.client.worker import ClientWorker

log = logging.getLogger("fedbus.client")


@dataclass(slots=True, kw_only=True)
class ClientApp:
    worker: ClientWorker
    transport: FederationClient
    broker: Broker
    owns_broker: bool
    secret: str = field(default="", repr=False)  # the identity's client secret: its queue's name derives from it
    claim: ShareClaim | None = None  # the share an `any/N` client holds while it runs
    _consumer: Consumption | None = None

    @property
    def client_id(self) -> str:
        return self.worker.client_id

    async def start(self) -> None:
        """Declare this client's queue and consume it; retried while a dropped broker connection comes back
        (a client restarted in a broker outage must not exit because of it)."""
        self._consumer = await while_reconnecting()(self._subscribe)

    async def _subscribe(self) -> Consumption:
        queue = await self.broker.ensure_client_queue(self.client_id, queue_key(self.secret))
        return await self.broker.consume(queue, self.worker.handle, prefetch=1)

    async def stop(self) -> None:
        if self._consumer is not None:
            await self._consumer.cancel()
        if self.owns_broker:
            await self.broker.close()
        await self.transport.close()
        if self.claim is not None:
            self.claim.release()


def check_data_source(settings: Settings) -> None:
    """ConfigError unless the client has data of its own or a simulated share (checked at start). Data of its
    own wins: a site sets FEDBUS_CLIENT_DATA in an environment (compose's) that gives every replica a share."""
    if settings.client_data is not None:
        return
    if settings.share is None:
        raise ConfigError(
            "FEDBUS_CLIENT_DATA",
            "must be set (the client's data folder), or FEDBUS_SHARE to simulate a share I/N of a global data set",
        )
    if settings.share.index is None and settings.share_claims is None:
        raise ConfigError(
            "FEDBUS_SHARE_CLAIMS", f"must be set for FEDBUS_SHARE={settings.share}: the folder replicas claim in"
        )


def data_source(settings: Settings) -> tuple[Path | None, ShareClaim | None, tuple[int, int] | None]:
    """What this client trains on: its own folder, or a simulated share (claimed now for `any/N`)."""
    check_data_source(settings)
    share = settings.share
    if settings.client_data is not None or share is None:
        return settings.client_data, None, None
    if share.index is not None:
        return None, None, (share.index, share.count)
    assert settings.share_claims is not None  # checked above
    claim = claim_share(settings.share_claims, share.count, settings.instance_name)
    return None, claim, (claim.index, claim.count)


async def build(
    settings: Settings,
    *,
    executor: Executor,
    broker: Broker | None = None,
    clock: Clock | None = None,
    transport: FederationClient | None = None,
    trainer: PoolTrainer | None = None,
) -> ClientApp:
    """Register (the identity of `settings.instance_name`) and wire the worker; the queue is consumed by `start`.

    Its privacy ledgers and the identity's client secret are kept in `settings.state_dir` (for `fedbus run`'s
    simulated clients, `out/state`), so a restart or a resumed run carries each client's spend over.
    """
    settings.require("ENROLLMENT_TOKEN")
    client_data, claim, share = data_source(settings)
    # Generous retries: a coordinator restart or a slow start must not make the client give up or drop an update.
    transport = transport or FederationClient(settings.grpc_address, tls=settings.client_tls, attempts=12)
    capabilities = ClientCapabilities(
        device=settings.device,
        cores=os.cpu_count() or 1,
        hostname=socket.gethostname(),
        own_data=settings.client_data is not None,
    )
    identity = IdentityStore(settings.state_dir, settings.instance_name)
    secret = identity.secret()
    try:
        registration = await transport.register(settings.enrollment_token, capabilities, settings.instance_name, secret)
    except grpc.aio.AioRpcError as exc:
        raise RegistrationFailed.of(settings.grpc_address, settings.client_tls is not None, exc) from exc
    if registration.secret:
        identity.keep(registration.client_id, registration.secret)
    if share is None:
        log.info("registered as %s (own data in %s)", registration.client_id, client_data)
    else:
        log.info("registered as %s (simulated share %d/%d)", registration.client_id, *share)
    from workers.client.trainer import PoolTrainer
    from workers.client.worker import ClientWorker

    owns_broker = broker is None
    if broker is None:
        # The coordinator declared the shared topology before serving gRPC; a client may only declare its own queue.
        broker = await open_broker(settings.amqp_url, connect_attempts=30, declare_topology=False)
    worker = ClientWorker(
        transport,
        trainer or PoolTrainer(executor),
        registration,
        data_dir=settings.data_dir,
        client_data=client_data,
        share=share,
        clock=clock or SystemClock(),
        ledgers=LedgerStore(settings.state_dir, registration.client_id),
    )
    return ClientApp(
        worker=worker,
        transport=transport,
        broker=broker,
        owns_broker=owns_broker,
        secret=registration.secret or secret,
        claim=claim,
    )


async def serve(settings: Settings, stop: asyncio.Event) -> None:
    """`fedbus client`: train until `stop`, then drain."""
    settings.require("ENROLLMENT_TOKEN")
    check_data_source(settings)
    if settings.device != "cpu":  # a GPU is checked by torch, before registering: a client that cannot train exits
        from workers.learning.training import check_device

        check_device(settings.device)
    observe("client", settings.instance_name)
    # Register first, then start the training processes (each spawns and imports torch: seconds) while the
    # client already consumes its queue: a federation of N clients is ready in the time of N registrations, and
    # a round that starts meanwhile waits for its worker in the pool.
    with process_pool(settings.workers, settings.device) as executor:
        app = await build(settings, executor=executor)
        warming = asyncio.create_task(asyncio.to_thread(warm_up, executor, settings.workers))
        await app.start()
        try:
            await stop.wait()
            log.info("client %s draining", app.client_id)
        finally:
            await app.stop()
            await asyncio.gather(warming, return_exceptions=True)
            shutdown_telemetry()
