"""Open either broker (the in-memory twin, or RabbitMQ at a URL) with a given topology, for suites run on both."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager

from broker.bus import Broker
from broker.in_memory_broker import InMemoryBroker
from broker.rabbitmq import RabbitBroker
from broker.topology import Topology

OpenBroker = Callable[[Topology], AbstractAsyncContextManager[Broker]]


def broker_opener(rabbitmq_url: str | None) -> OpenBroker:
    """`opened(topology)`: the in-memory broker when `rabbitmq_url` is None, RabbitMQ otherwise; closed after."""

    @asynccontextmanager
    async def opened(topology: Topology) -> AsyncIterator[Broker]:
        broker: Broker
        if rabbitmq_url is None:
            broker = InMemoryBroker(topology=topology)
        else:
            broker = await RabbitBroker.connect(rabbitmq_url, topology=topology, publish_timeout=5.0)
        try:
            yield broker
        finally:
            await broker.close()

    return opened
