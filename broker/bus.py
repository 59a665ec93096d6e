"""The surface both brokers offer (RabbitMQ adapter and in-memory twin); composition roots type against it."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Protocol

from broker.messages import QueuedMessage
from broker.topology import Topology
from contracts.envelope import Envelope
from contracts.ports import Handler


class Consumption(Protocol):
    """A running consumer; cancelling it stops deliveries and requeues what was in flight."""

    async def cancel(self) -> None: ...


class Broker(Protocol):
    """Publisher and Subscriber (contracts.ports) plus declaration, inspection and shutdown."""

    @property
    def topology(self) -> Topology: ...

    async def declare(self) -> None: ...

    async def publish(self, envelope: Envelope) -> None: ...

    async def publish_raw(
        self,
        routing_key: str,
        body: bytes,
        *,
        message_id: str,
        headers: Mapping[str, Any] | None = None,
    ) -> None: ...

    async def consume(self, queue: str, handler: Handler, *, prefetch: int = 1) -> Consumption: ...

    async def ensure_client_queue(self, client_id: str, key: str = "") -> str: ...

    async def peek(self, queue: str) -> list[QueuedMessage]: ...

    async def close(self) -> None: ...
