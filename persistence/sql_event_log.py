"""The event log on SQLAlchemy Core with an AsyncEngine: the same code for SQLite and PostgreSQL.

Appends are serialized (BEGIN IMMEDIATE on SQLite, a transaction-scoped advisory lock on PostgreSQL) so
positions are handed out in commit order and a reader tailing by position never skips a late commit.
Projections are applied in the appending transaction. Reads and blob puts retry transient errors;
appends raise TransientError to the caller, whose redelivery decides. Reads, blob puts and marking events
published are single statements, run outside transactions on PostgreSQL (`sql_engine.autocommit`): one round
trip each.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from typing import Any, TypeVar

from sqlalchemy import Executable, Row, func, select, update
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from contracts.envelope import Envelope, RecordedEvent
from contracts.errors import NotFound
from contracts.event_codec import event_from_dict
from contracts.ports import EventLog
from persistence.append_listeners import AppendListeners
from persistence.errors import IDEMPOTENT_IO, RetryPolicy, retried, translated
from persistence.schema import blobs, events, metadata
from persistence.sql_dialect import append_lock
from persistence.sql_engine import autocommit, begin_write, create_engine
from persistence.sql_read_model import SqlReadModel, prune_blobs
from persistence.sql_unit_of_work import SqlUnitOfWork, blob_row

T = TypeVar("T")


class SqlEventLog(EventLog):
    """EventLog, UnitOfWork factory and BlobStore over one AsyncEngine; `reads` is its read model."""

    def __init__(
        self, engine: AsyncEngine, *, retry: RetryPolicy = IDEMPOTENT_IO, now: Callable[[], float] = time.time
    ) -> None:
        self._engine = engine
        self._single = autocommit(engine)
        self._retry = retry
        self._now = now
        self._reads = SqlReadModel(engine, retry=retry)
        self._appended = AppendListeners()

    @classmethod
    async def connect(cls, url: str, *, create: bool = True, retry: RetryPolicy = IDEMPOTENT_IO) -> SqlEventLog:
        """Open the database at `url` (sqlite[+aiosqlite]:///path or postgresql[+asyncpg]://...).

        With `create`, missing tables are created (metadata.create_all; `fedbus db upgrade` runs Alembic).
        """
        log = cls(create_engine(url, create_dirs=create), retry=retry)
        if create:
            try:
                # exclusive: several processes may start at once against one empty database
                async with log._write("create schema", exclusive=True) as conn:
                    await conn.run_sync(metadata.create_all)
            except BaseException:
                await log.close()
                raise
        return log

    @property
    def engine(self) -> AsyncEngine:
        """The underlying engine (migrations and administrative tasks)."""
        return self._engine

    async def close(self) -> None:
        await self._engine.dispose()

    def on_append(self, listener: Callable[[], None]) -> Callable[[], None]:
        return self._appended.add(listener)

    @asynccontextmanager
    async def _write(self, action: str, *, exclusive: bool = False) -> AsyncIterator[AsyncConnection]:
        conn = self._engine.connect()
        with translated(action):
            await conn.start()
        try:
            with translated(action):
                await begin_write(conn)
                lock = append_lock(conn.dialect.name)
                if lock is not None and exclusive:
                    await conn.execute(lock)
            yield conn
            with translated(action):
                await conn.commit()
        finally:
            await conn.close()  # rolls back whatever was not committed

    async def _single_write(self, action: str, statement: Executable) -> None:
        """One statement that is atomic on its own: outside any transaction on PostgreSQL (one round trip), in
        a write transaction of its own on SQLite (BEGIN IMMEDIATE: writers queue instead of failing)."""
        if self._single is self._engine:
            async with self._write(action) as conn:
                await conn.execute(statement)
            return
        with translated(action):
            async with self._single.connect() as conn:
                await conn.execute(statement)

    async def _read(self, action: str, query: Callable[[AsyncConnection], Awaitable[T]]) -> T:
        return await self.reads.read(action, query)

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[SqlUnitOfWork]:
        """A unit of work: commits when the block exits normally, rolls back on any exception."""
        async with self._write("transaction") as conn:
            uow = SqlUnitOfWork(conn, now=self._now)
            yield uow
        if uow.appended:
            self._appended.notify()

    async def append(self, stream_id: str, events: Sequence[Envelope], expected_version: int | None = None) -> int:
        """Append at the stream's end in a transaction of its own; returns the new stream version."""
        async with self.transaction() as uow:
            return await uow.append(stream_id, events, expected_version)

    async def read_stream(self, stream_id: str, after_version: int = 0) -> list[RecordedEvent]:
        query = (
            select(events)
            .where(events.c.stream_id == stream_id, events.c.version > after_version)
            .order_by(events.c.version)
        )
        return await self._read("read stream", lambda conn: _recorded(conn, query))

    async def read_all(self, after_position: int = 0, limit: int = 1000) -> list[RecordedEvent]:
        query = select(events).where(events.c.position > after_position).order_by(events.c.position).limit(limit)
        return await self._read("read all", lambda conn: _recorded(conn, query))

    async def unpublished(self, limit: int = 100) -> list[RecordedEvent]:
        query = select(events).where(events.c.published_at.is_(None)).order_by(events.c.position).limit(limit)
        return await self._read("read unpublished", lambda conn: _recorded(conn, query))

    async def mark_published(self, positions: Sequence[int]) -> None:
        """Set published_at on these positions; idempotent, hence retried."""
        if not positions:
            return

        statement = (
            update(events)
            .where(events.c.position.in_(list(positions)), events.c.published_at.is_(None))
            .values(published_at=self._now())
        )

        async def once() -> None:
            await self._single_write("mark published", statement)

        await retried(self._retry, once)

    async def put_blob(self, digest: str, kind: str, data: bytes) -> None:
        """Store bytes under their digest; storing the same digest again is a no-op."""

        statement = blob_row(self._engine.dialect.name, digest, kind, data, self._now())

        async def once() -> None:
            await self._single_write("put blob", statement)

        await retried(self._retry, once)

    async def get_blob(self, digest: str) -> bytes:
        async def query(conn: AsyncConnection) -> bytes | None:
            return await conn.scalar(select(blobs.c.data).where(blobs.c.digest == digest))

        data = await self._read("get blob", query)
        if data is None:
            raise NotFound(f"blob {digest}")
        return bytes(data)

    async def has_blob(self, digest: str) -> bool:
        async def query(conn: AsyncConnection) -> bool:
            count = await conn.scalar(select(func.count()).select_from(blobs).where(blobs.c.digest == digest))
            return bool(count)

        return await self._read("has blob", query)

    @property
    def reads(self) -> SqlReadModel:
        """The queries on the projections and the log's pages (the API, the CLI, the reports)."""
        return self._reads

    async def prune(self, keep_rounds: int) -> int:
        """Delete the blobs of rounds older than each run's last `keep_rounds`; returns how many."""
        async with self._write("prune") as conn:
            return await prune_blobs(conn, keep_rounds)


async def _recorded(conn: AsyncConnection, query: Any) -> list[RecordedEvent]:
    return [_to_recorded(row) for row in await conn.execute(query)]


def _to_recorded(row: Row[Any]) -> RecordedEvent:
    envelope = Envelope(
        event=event_from_dict(row.type, row.payload),
        event_id=row.event_id,
        occurred_at=row.occurred_at,
        schema_version=row.schema_version,
        traceparent=row.traceparent,
    )
    return RecordedEvent(envelope=envelope, position=row.position, stream_id=row.stream_id, version=row.version)


__all__ = ["SqlEventLog"]
