"""One SQL transaction seen as a UnitOfWork: inbox claim, appends with projections, and blob puts."""

from __future__ import annotations

from collections.abc import Callable, Sequence

from sqlalchemy import Insert, func, insert, select
from sqlalchemy.ext.asyncio import AsyncConnection

from contracts.envelope import Envelope
from contracts.errors import ConcurrencyConflict
from contracts.event_codec import event_to_dict
from contracts.ports import UnitOfWork
from persistence.errors import translated
from persistence.projections import project
from persistence.schema import blobs, events, inbox
from persistence.sql_dialect import append_lock, upsert


class SqlUnitOfWork(UnitOfWork):
    """Works inside a transaction its owner began and will commit or roll back."""

    def __init__(self, conn: AsyncConnection, *, now: Callable[[], float]) -> None:
        self._conn = conn
        self._now = now
        self._dialect = conn.dialect.name
        self._holds_append_lock = False
        self.appended = 0  # events appended in this unit of work (its owner tells the log's listeners)

    async def claim(self, consumer: str, message_id: str) -> bool:
        row = {"consumer": consumer, "message_id": message_id, "processed_at": self._now()}
        with translated("claim"):
            result = await self._conn.execute(upsert(self._dialect, inbox, row, ["consumer", "message_id"]))
        return bool(result.rowcount == 1)

    async def append(self, stream_id: str, events_: Sequence[Envelope], expected_version: int | None = None) -> int:
        with translated("append"):
            await self._lock_appends()
            current = await self._conn.scalar(
                select(func.coalesce(func.max(events.c.version), 0)).where(events.c.stream_id == stream_id)
            )
            version = int(current or 0)
            if expected_version is not None and expected_version != version:
                raise ConcurrencyConflict(f"stream {stream_id!r} is at version {version}, expected {expected_version}")
            if not events_:
                return version
            rows = [_row(stream_id, version + offset, envelope) for offset, envelope in enumerate(events_, 1)]
            await self._conn.execute(insert(events), rows)
            self.appended += len(rows)
            for envelope in events_:
                await project(self._conn, envelope)
        return version + len(events_)

    async def put_blob(self, digest: str, kind: str, data: bytes) -> None:
        with translated("put blob"):
            await self._conn.execute(blob_row(self._dialect, digest, kind, data, self._now()))

    async def _lock_appends(self) -> None:
        # Held until commit: nobody else can draw a position before this transaction is visible.
        lock = append_lock(self._dialect)
        if lock is not None and not self._holds_append_lock:
            await self._conn.execute(lock)
            self._holds_append_lock = True


def blob_row(dialect: str, digest: str, kind: str, data: bytes, now: float) -> Insert:
    """The statement that stores a blob under its digest; a digest already stored is left as it is."""
    row = {"digest": digest, "kind": kind, "size": len(data), "data": data, "created_at": now}
    return upsert(dialect, blobs, row, ["digest"])


def _row(stream_id: str, version: int, envelope: Envelope) -> dict[str, object]:
    return {
        "event_id": envelope.event_id,
        "stream_id": stream_id,
        "version": version,
        "type": envelope.type,
        "run_id": envelope.run_id,
        "round": envelope.round,
        "payload": event_to_dict(envelope.event),
        "schema_version": envelope.schema_version,
        "occurred_at": envelope.occurred_at,
        "traceparent": envelope.traceparent,
        "published_at": None,
    }


__all__ = ["SqlUnitOfWork", "blob_row"]
