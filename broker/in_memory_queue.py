"""One queue of the in-memory broker: ready messages in order, TTL, drop-head bound and a wake-up signal."""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from broker.messages import QueuedMessage
from broker.topology import Queue


@dataclass(slots=True, kw_only=True)
class StoredMessage:
    """A message in one queue; `returns` counts requeues like RabbitMQ's `x-delivery-count`."""

    routing_key: str
    body: bytes
    message_id: str
    headers: dict[str, Any] = field(default_factory=dict)
    enqueued_at: float
    returns: int = 0
    delivered: bool = False

    def snapshot(self) -> QueuedMessage:
        return QueuedMessage(
            routing_key=self.routing_key,
            body=self.body,
            message_id=self.message_id,
            headers=dict(self.headers),
            redelivered=self.delivered,
        )


class MemoryQueue:
    """Ready messages of one queue. Consumers wait on an event, never poll."""

    def __init__(self, spec: Queue, clock: Callable[[], float]) -> None:
        self.spec = spec
        self._clock = clock
        self._ready: deque[StoredMessage] = deque()
        self._wakeup = asyncio.Event()

    def __len__(self) -> int:
        return len(self._ready)

    def push(self, message: StoredMessage) -> list[StoredMessage]:
        """Append at the tail; returns the messages dropped from the head by `max_length`."""
        self._ready.append(message)
        self._wakeup.set()
        dropped: list[StoredMessage] = []
        while self.spec.max_length is not None and len(self._ready) > self.spec.max_length:
            dropped.append(self._ready.popleft())
        return dropped

    def push_front(self, message: StoredMessage) -> None:
        """Put a returned message back at the head, where it is delivered next."""
        self._ready.appendleft(message)
        self._wakeup.set()

    def expire(self) -> list[StoredMessage]:
        """Remove and return the messages older than the queue's TTL."""
        ttl = self.spec.message_ttl_s
        if ttl is None or not self._ready:
            return []
        now = self._clock()
        expired = [m for m in self._ready if now - m.enqueued_at >= ttl]
        if expired:
            self._ready = deque(m for m in self._ready if now - m.enqueued_at < ttl)
        return expired

    def take(self) -> StoredMessage | None:
        """The head message, or None when the queue is empty (call `expire` first)."""
        return self._ready.popleft() if self._ready else None

    async def wait(self) -> None:
        """Wait until something is pushed after this call (returns at once if it already was)."""
        if self._ready:
            return
        self._wakeup.clear()
        await self._wakeup.wait()

    def snapshot(self) -> list[QueuedMessage]:
        return [m.snapshot() for m in self._ready]
