"""Opens the broker an `amqp_url` names: `memory://` (the in-memory twin) or `amqp[s]://` (RabbitMQ).

The scheme alone picks the adapter, so composition roots call `open_broker(settings.amqp_url)` and type
against `Broker` (broker.bus, re-exported here), which both adapters satisfy.
"""

from __future__ import annotations

from typing import Final

from broker.bus import Broker
from broker.in_memory_broker import InMemoryBroker
from broker.rabbitmq import RabbitBroker
from contracts.errors import ConfigError
from ops.urls import MEMORY_SCHEME, adapter_scheme

FIELD: Final = "amqp_url"
AMQP_SCHEMES: Final = ("amqp", "amqps")
SCHEMES: Final = (MEMORY_SCHEME, *AMQP_SCHEMES)


async def open_broker(url: str, *, connect_attempts: int = 30, declare_topology: bool = True) -> Broker:
    """The broker at `url`, with the default topology; RabbitMQ's first connect is tried `connect_attempts` times.

    `memory://` is a fresh broker private to this call and this event loop; it always declares the
    topology. `declare_topology=False` is for least-privileged RabbitMQ users (clients), which may only
    declare their own queue. Raises ConfigError("amqp_url", ...) for any other scheme.
    """
    if connect_attempts < 1:
        raise ConfigError("connect_attempts", "must be at least 1")
    if adapter_scheme(url, field=FIELD, schemes=SCHEMES, kind="a broker URL") == MEMORY_SCHEME:
        return InMemoryBroker()
    return await RabbitBroker.connect(url, connect_attempts=connect_attempts, declare_topology=declare_topology)


__all__ = ["FIELD", "SCHEMES", "Broker", "open_broker"]
