"""The RabbitMQ adapter across a connection cut, through a TCP proxy the test controls."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Coroutine, Iterator
from contextlib import asynccontextmanager
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import pytest

from broker.rabbitmq import RabbitBroker
from broker.topology import Topology, build_topology
from contracts.envelope import Envelope
from contracts.errors import ConfigError, TransientError
from contracts.events import QuorumReached
from tests.support.polling import eventually
from tests.support.rabbitmq import fresh_vhost, rabbitmq_address
from tests.support.tcp_proxy import TcpProxy

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def rabbitmq_url() -> Iterator[str]:
    with fresh_vhost("fedbus-integration") as url:
        yield url


def run(scenario: Coroutine[Any, Any, None]) -> None:
    asyncio.run(asyncio.wait_for(scenario, timeout=30))


def quorum(round_: int) -> Envelope:
    event = QuorumReached(run_id="r1", round=round_, model_version=0, update_ids=("u",), partial=False)
    return Envelope(event=event)


@asynccontextmanager
async def proxied_broker(url: str, topology: Topology) -> AsyncIterator[tuple[RabbitBroker, TcpProxy]]:
    proxy = TcpProxy(*rabbitmq_address())
    port = await proxy.start()
    parts = urlsplit(url)
    netloc = f"{parts.username}:{parts.password}@127.0.0.1:{port}"
    proxied = urlunsplit((parts.scheme, netloc, parts.path, "", ""))
    broker = await RabbitBroker.connect(proxied, topology=topology, publish_timeout=1.0, reconnect_interval=0.2)
    try:
        yield broker, proxy
    finally:
        proxy.restore()
        await broker.close()
        await proxy.stop()


async def publish_until_accepted(broker: RabbitBroker, envelope: Envelope, *, within: float = 15.0) -> int:
    """Publish, retrying transient failures until the broker confirms; returns how many attempts failed."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    failures = 0
    while True:
        try:
            await broker.publish(envelope)
            return failures
        except TransientError:
            failures += 1
            if loop.time() >= deadline:
                raise
            await asyncio.sleep(0.1)


async def _value(items: list[str]) -> list[str]:
    return list(items)


def test_publish_fails_transiently_while_cut_and_succeeds_after_restore(rabbitmq_url: str) -> None:
    async def scenario() -> None:
        topology = build_topology(namespace=f"t{uuid.uuid4().hex[:12]}")
        async with proxied_broker(rabbitmq_url, topology) as (broker, proxy):
            before, after = quorum(1), quorum(2)
            await broker.publish(before)

            proxy.cut()
            with pytest.raises(TransientError):
                await broker.publish(after)
            proxy.restore()
            await publish_until_accepted(broker, after)

            queued = await eventually(lambda: broker.peek(topology.aggregator.name), lambda m: len(m) == 2)
            assert [m.message_id for m in queued] == [before.event_id, after.event_id]

    run(scenario())


def test_consumer_resumes_after_the_connection_comes_back(rabbitmq_url: str) -> None:
    async def scenario() -> None:
        topology = build_topology(namespace=f"t{uuid.uuid4().hex[:12]}")
        direct = await RabbitBroker.connect(rabbitmq_url, topology=topology, publish_timeout=5.0)
        try:
            async with proxied_broker(rabbitmq_url, topology) as (broker, proxy):
                handled: list[str] = []

                async def handler(envelope: Envelope) -> None:
                    handled.append(envelope.event_id)

                await broker.consume(topology.aggregator.name, handler)
                first, during_cut = quorum(1), quorum(2)
                await direct.publish(first)
                await eventually(lambda: _value(handled), lambda h: len(h) == 1)

                proxy.cut()
                await direct.publish(during_cut)
                proxy.restore()

                # at-least-once: `first` comes again if the cut beat its ack
                await eventually(lambda: _value(handled), lambda h: during_cut.event_id in h, within=15.0)
                assert set(handled) == {first.event_id, during_cut.event_id}
        finally:
            await direct.close()

    run(scenario())


def test_close_returns_while_the_broker_is_unreachable(rabbitmq_url: str) -> None:
    async def scenario() -> None:
        topology = build_topology(namespace=f"t{uuid.uuid4().hex[:12]}")
        async with proxied_broker(rabbitmq_url, topology) as (broker, proxy):

            async def handler(envelope: Envelope) -> None:
                return None

            await broker.consume(topology.aggregator.name, handler)
            proxy.cut()

            await asyncio.wait_for(broker.close(), timeout=10)

            with pytest.raises(TransientError):
                await broker.publish(quorum(1))

    run(scenario())


def test_redeclaring_a_queue_with_other_arguments_is_a_config_error(rabbitmq_url: str) -> None:
    async def scenario() -> None:
        namespace = f"t{uuid.uuid4().hex[:12]}"
        first = await RabbitBroker.connect(rabbitmq_url, topology=build_topology(namespace=namespace))
        try:
            with pytest.raises(ConfigError, match="other arguments"):
                await RabbitBroker.connect(rabbitmq_url, topology=build_topology(namespace=namespace, delivery_limit=3))
        finally:
            await first.close()

    run(scenario())
