"""The in-memory twin of SqlEventLog: same observable semantics for EventLog, UnitOfWork and BlobStore.

A transaction holds the log's lock from start to end (as BEGIN IMMEDIATE does on SQLite), stages its
changes and applies them at once on success. Payloads go through JSON like the SQL backends, so an
event that the database could not store fails here too. No projections.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass

from contracts.envelope import Envelope, RecordedEvent
from contracts.errors import ConcurrencyConflict, NotFound
from contracts.event_codec import event_from_dict, event_to_dict
from contracts.ports import EventLog, UnitOfWork
from persistence.append_listeners import AppendListeners


@dataclass(slots=True, kw_only=True)
class _Stored:
    position: int
    stream_id: str
    version: int
    type: str
    payload: str
    event_id: str
    occurred_at: float
    schema_version: int
    traceparent: str | None
    published_at: float | None = None

    def recorded(self) -> RecordedEvent:
        envelope = Envelope(
            event=event_from_dict(self.type, json.loads(self.payload)),
            event_id=self.event_id,
            occurred_at=self.occurred_at,
            schema_version=self.schema_version,
            traceparent=self.traceparent,
        )
        return RecordedEvent(envelope=envelope, position=self.position, stream_id=self.stream_id, version=self.version)


class InMemoryUnitOfWork(UnitOfWork):
    """Stages claims, events and blobs; the log applies them when the transaction block succeeds."""

    def __init__(self, log: InMemoryEventLog) -> None:
        self._log = log
        self.claims: set[tuple[str, str]] = set()
        self.events: list[tuple[str, int, Envelope, str]] = []
        self.versions: dict[str, int] = {}
        self.blobs: dict[str, bytes] = {}

    async def claim(self, consumer: str, message_id: str) -> bool:
        key = (consumer, message_id)
        if key in self.claims or key in self._log._inbox:
            return False
        self.claims.add(key)
        return True

    async def append(self, stream_id: str, events: Sequence[Envelope], expected_version: int | None = None) -> int:
        version = self.versions.get(stream_id, self._log._versions.get(stream_id, 0))
        if expected_version is not None and expected_version != version:
            raise ConcurrencyConflict(f"stream {stream_id!r} is at version {version}, expected {expected_version}")
        staged_ids = {envelope.event_id for _, _, envelope, _ in self.events}
        encoded = []
        for offset, envelope in enumerate(events, 1):
            if envelope.event_id in self._log._event_ids or envelope.event_id in staged_ids:
                raise ConcurrencyConflict(f"event {envelope.event_id} was already appended")
            staged_ids.add(envelope.event_id)
            encoded.append((stream_id, version + offset, envelope, json.dumps(event_to_dict(envelope.event))))
        self.events.extend(encoded)
        self.versions[stream_id] = version + len(events)
        return version + len(events)

    async def put_blob(self, digest: str, kind: str, data: bytes) -> None:
        if digest not in self._log._blobs:
            self.blobs.setdefault(digest, bytes(data))


class InMemoryEventLog(EventLog):
    """A real event log in dicts and lists; one process, one event loop."""

    def __init__(self, *, now: Callable[[], float] = time.time) -> None:
        self._now = now
        self._lock = asyncio.Lock()
        self._events: list[_Stored] = []
        self._versions: dict[str, int] = {}
        self._event_ids: set[str] = set()
        self._inbox: set[tuple[str, str]] = set()
        self._blobs: dict[str, bytes] = {}
        self._appended = AppendListeners()

    def on_append(self, listener: Callable[[], None]) -> Callable[[], None]:
        return self._appended.add(listener)

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[InMemoryUnitOfWork]:
        """Holds the log's lock: do not call the log's own append/put_blob inside the block."""
        async with self._lock:
            uow = InMemoryUnitOfWork(self)
            yield uow
            self._commit(uow)
        if uow.events:
            self._appended.notify()

    def _commit(self, uow: InMemoryUnitOfWork) -> None:
        # Synchronous: nothing else runs on the loop while the staged changes are applied.
        self._inbox |= uow.claims
        for digest, data in uow.blobs.items():
            self._blobs.setdefault(digest, data)
        for stream_id, version, envelope, payload in uow.events:
            stored = _Stored(
                position=len(self._events) + 1,
                stream_id=stream_id,
                version=version,
                type=envelope.type,
                payload=payload,
                event_id=envelope.event_id,
                occurred_at=envelope.occurred_at,
                schema_version=envelope.schema_version,
                traceparent=envelope.traceparent,
            )
            self._events.append(stored)
            self._event_ids.add(envelope.event_id)
        self._versions |= uow.versions

    async def append(self, stream_id: str, events: Sequence[Envelope], expected_version: int | None = None) -> int:
        async with self.transaction() as uow:
            return await uow.append(stream_id, events, expected_version)

    async def read_stream(self, stream_id: str, after_version: int = 0) -> list[RecordedEvent]:
        return [e.recorded() for e in self._events if e.stream_id == stream_id and e.version > after_version]

    async def read_all(self, after_position: int = 0, limit: int = 1000) -> list[RecordedEvent]:
        start = max(after_position, 0)
        return [e.recorded() for e in self._events[start : start + max(limit, 0)]]

    async def unpublished(self, limit: int = 100) -> list[RecordedEvent]:
        pending = (e for e in self._events if e.published_at is None)
        return [e.recorded() for e, _ in zip(pending, range(max(limit, 0)), strict=False)]

    async def mark_published(self, positions: Sequence[int]) -> None:
        at = self._now()
        for position in positions:
            if 0 < position <= len(self._events) and self._events[position - 1].published_at is None:
                self._events[position - 1].published_at = at

    async def put_blob(self, digest: str, kind: str, data: bytes) -> None:
        async with self.transaction() as uow:
            await uow.put_blob(digest, kind, data)

    async def get_blob(self, digest: str) -> bytes:
        try:
            return self._blobs[digest]
        except KeyError:
            raise NotFound(f"blob {digest}") from None

    async def has_blob(self, digest: str) -> bool:
        return digest in self._blobs

    async def close(self) -> None:
        return None


__all__ = ["InMemoryEventLog", "InMemoryUnitOfWork"]
