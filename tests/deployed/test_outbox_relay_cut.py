"""The outbox relay across a broker cut: what it could not publish waits in the log, then goes out once.

The relay is at-least-once: an event whose publish reached the broker but whose confirm (or mark) was
lost is published again. The test cuts the connection only while the relay is idle (every event
published and marked), so no publish is in flight across the cut; events appended during the cut
cannot reach the broker until it is restored. Under that design every event arrives exactly once, in
position order, and a duplicate or a gap would be a bug, not the at-least-once allowance.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from urllib.parse import urlsplit, urlunsplit

import pytest

from broker.rabbitmq import RabbitBroker
from contracts.envelope import Envelope, RecordedEvent
from contracts.events import ClientRegistered
from persistence.sql_admin import ensure_database
from persistence.sql_event_log import SqlEventLog
from services.relay import OutboxRelay
from tests.support.polling import eventually
from tests.support.rabbitmq import rabbitmq_address
from tests.support.tcp_proxy import TcpProxy

pytestmark = [pytest.mark.integration, pytest.mark.deployed]


class Failures(logging.Handler):
    """Counts the relay's `retrying` warnings: proof that it tried to publish and could not."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.count = 0

    def emit(self, record: logging.LogRecord) -> None:
        self.count += 1


@asynccontextmanager
async def through_proxy(url: str) -> AsyncIterator[tuple[RabbitBroker, TcpProxy]]:
    proxy = TcpProxy(*rabbitmq_address())
    port = await proxy.start()
    parts = urlsplit(url)
    proxied = urlunsplit((parts.scheme, f"{parts.username}:{parts.password}@127.0.0.1:{port}", parts.path, "", ""))
    broker = await RabbitBroker.connect(proxied, publish_timeout=5.0, reconnect_interval=0.2)
    try:
        yield broker, proxy
    finally:
        proxy.restore()
        await broker.close()
        await proxy.stop()


async def append(event_log: SqlEventLog, first: int, count: int) -> None:
    for i in range(first, first + count):
        event = ClientRegistered(client_id=f"c-{i}", capabilities={})
        await event_log.append(f"client:c-{i}", [Envelope(event=event)], expected_version=0)


async def unpublished(event_log: SqlEventLog) -> list[RecordedEvent]:
    return await event_log.unpublished(limit=1000)


async def scenario(amqp_url: str, database_url: str) -> tuple[list[str], list[str], list[int], list[int]]:
    await ensure_database(database_url)
    event_log = await SqlEventLog.connect(database_url)
    failures = Failures()
    logging.getLogger("services.relay").addHandler(failures)
    received: list[str] = []

    async def record(envelope: Envelope) -> None:
        received.append(envelope.event_id)

    observer = await RabbitBroker.connect(amqp_url)
    try:
        async with through_proxy(amqp_url) as (broker, proxy):
            await observer.consume("fedbus.inspect", record)
            relay = asyncio.create_task(OutboxRelay(event_log, broker).run_forever())
            try:
                await append(event_log, 0, 5)
                await eventually(lambda: unpublished(event_log), lambda pending: not pending, within=30)
                proxy.cut()
                await append(event_log, 5, 5)
                await eventually(lambda: asyncio.sleep(0, failures.count), lambda n: n >= 1, within=60)
                stuck = [r.position for r in await unpublished(event_log)]
                proxy.restore()
                await eventually(lambda: unpublished(event_log), lambda pending: not pending, within=60)
                await eventually(lambda: asyncio.sleep(0, len(received)), lambda n: n >= 10, within=30)
            finally:
                relay.cancel()
                await asyncio.gather(relay, return_exceptions=True)
        logged = await event_log.read_all()
    finally:
        logging.getLogger("services.relay").removeHandler(failures)
        await observer.close()
        await event_log.close()
    return received, [r.envelope.event_id for r in logged], stuck, [r.position for r in logged[5:]]


def test_events_appended_while_the_broker_is_cut_off_wait_in_the_log_and_go_out_once_in_order(
    amqp_url: str, database_url: str
) -> None:
    received, logged, stuck, appended_during_cut = asyncio.run(
        asyncio.wait_for(scenario(amqp_url, database_url), timeout=180)
    )

    assert stuck == appended_during_cut
    assert received == logged
