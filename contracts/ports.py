"""Ports: what the core needs from the outside world. Each has a real adapter and an in-memory twin."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from contextlib import AbstractAsyncContextManager
from typing import Protocol

from contracts.envelope import Envelope, RecordedEvent


class Clock(Protocol):
    """Wall-clock time in seconds since the epoch; injected so tests can move time."""

    def now(self) -> float: ...


class BlobStore(Protocol):
    """Content-addressed bytes (models and updates), keyed by sha256 hex digest."""

    async def put_blob(self, digest: str, kind: str, data: bytes) -> None: ...

    async def get_blob(self, digest: str) -> bytes: ...

    async def has_blob(self, digest: str) -> bool: ...


class UnitOfWork(Protocol):
    """One transaction: inbox claim, appends, projections and blobs commit together or not at all."""

    async def claim(self, consumer: str, message_id: str) -> bool:
        """Record that `consumer` processed `message_id`; False when it already had (skip the effects)."""
        ...

    async def append(self, stream_id: str, events: Sequence[Envelope], expected_version: int | None = None) -> int:
        """Append at the stream's end; `expected_version` enforces optimistic concurrency.

        Returns the stream's new version. Raises ConcurrencyConflict when the version was taken.
        """
        ...

    async def put_blob(self, digest: str, kind: str, data: bytes) -> None: ...


class EventStore(Protocol):
    """Streams of events: append at an expected version, read one stream or the whole log in order."""

    def transaction(self) -> AbstractAsyncContextManager[UnitOfWork]: ...

    async def append(self, stream_id: str, events: Sequence[Envelope], expected_version: int | None = None) -> int: ...

    async def read_stream(self, stream_id: str, after_version: int = 0) -> list[RecordedEvent]: ...

    async def read_all(self, after_position: int = 0, limit: int = 1000) -> list[RecordedEvent]: ...


class Outbox(Protocol):
    """What the outbox relay needs: the appended events not yet published, in position order."""

    async def unpublished(self, limit: int = 100) -> list[RecordedEvent]: ...

    async def mark_published(self, positions: Sequence[int]) -> None: ...


class EventLog(EventStore, Outbox, BlobStore, Protocol):
    """The append-only event log as one adapter: streams, outbox, inbox (in transactions) and blobs.

    Collaborators ask for the narrowest part they use (the relay an Outbox, the blob cache a BlobStore)."""

    def on_append(self, listener: Callable[[], None]) -> Callable[[], None]:
        """Call `listener` (on the event loop, without arguments; it must not raise) after every committed
        transaction of this adapter that appended events, so waiters in this process need not poll for them;
        returns the function that removes it. Appends by other processes, or through another adapter on the
        same database, are not seen: whoever must see those still polls."""

    async def close(self) -> None: ...


class Publisher(Protocol):
    """Publishes an event on the bus (topic exchange, routing key = the event's routing key)."""

    async def publish(self, envelope: Envelope) -> None: ...


Handler = Callable[[Envelope], Awaitable[None]]


class Consumption(Protocol):
    """A running consumer; cancelling it stops deliveries and requeues what was in flight."""

    async def cancel(self) -> None: ...


class Subscriber(Protocol):
    """Consumes a named queue of the topology; the handler's outcome decides the disposition."""

    async def consume(self, queue: str, handler: Handler, *, prefetch: int = 1) -> Consumption: ...

    async def ensure_client_queue(self, client_id: str) -> str: ...
