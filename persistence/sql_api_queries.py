"""Read queries the API needs beyond SqlEventLog's helpers: filtered event pages, a run's updates,
refusals and privacy rows, stream versions and the totals behind the API's Prometheus gauges.

Plain reads over the log's AsyncEngine, retried on transient errors like every other read.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

from sqlalchemy import Row, func, select
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from persistence.errors import IDEMPOTENT_IO, RetryPolicy, retried, translated
from persistence.schema import clients, declines, events, privacy, rejections, rounds, updates

T = TypeVar("T")
Record = dict[str, Any]


@dataclass(frozen=True, slots=True, kw_only=True)
class EventFilter:
    """Which events a page holds: after a position, optionally one run, round and type."""

    after: int = 0
    limit: int = 100
    run_id: str | None = None
    round: int | None = None
    type: str | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class LogStats:
    """Totals over the whole log for the API's gauges."""

    rounds_aggregated: int = 0
    updates_accepted: int = 0
    rejected_by_reason: dict[str, int] = field(default_factory=dict)
    bytes_in: int = 0
    last_compression_ratio: float | None = None
    epsilon_max: float | None = None
    last_aggregation_s: float | None = None


def _plain(row: Row[Any]) -> Record:
    return dict(row._mapping)


class SqlApiQueries:
    """The API's extra reads over an engine the caller owns (SqlEventLog.engine)."""

    def __init__(self, engine: AsyncEngine, *, retry: RetryPolicy = IDEMPOTENT_IO) -> None:
        self._engine = engine
        self._retry = retry

    async def _read(self, action: str, query: Callable[[AsyncConnection], Awaitable[T]]) -> T:
        async def once() -> T:
            with translated(action):
                async with self._engine.connect() as conn:
                    return await query(conn)

        return await retried(self._retry, once)

    async def _rows(self, action: str, query: Any) -> list[Record]:
        async def rows(conn: AsyncConnection) -> list[Record]:
            return [_plain(row) for row in await conn.execute(query)]

        return await self._read(action, rows)

    async def head(self) -> int:
        """The position of the last event (0 for an empty log); also the readiness probe."""
        value = await self._read("read head", lambda conn: conn.scalar(select(func.max(events.c.position))))
        return int(value or 0)

    async def events(self, page: EventFilter) -> list[Record]:
        """A page of the log in position order, as plain rows (payload as stored)."""
        query = select(events).where(events.c.position > page.after)
        if page.run_id is not None:
            query = query.where(events.c.run_id == page.run_id)
        if page.round is not None:
            query = query.where(events.c.round == page.round)
        if page.type is not None:
            query = query.where(events.c.type == page.type)
        return await self._rows("read events", query.order_by(events.c.position).limit(page.limit))

    async def stream_version(self, stream_id: str) -> int:
        """The version of a stream's last event (0 when the stream is empty)."""
        query = select(func.max(events.c.version)).where(events.c.stream_id == stream_id)
        value = await self._read("read stream version", lambda conn: conn.scalar(query))
        return int(value or 0)

    async def client(self, client_id: str) -> Record | None:
        """One client's projection row, or None."""
        found = await self._rows("read client", select(clients).where(clients.c.client_id == client_id))
        return found[0] if found else None

    async def run_updates(self, run_id: str) -> list[Record]:
        """Every accepted update of a run, by round then acceptance time."""
        query = (
            select(updates)
            .where(updates.c.run_id == run_id)
            .order_by(updates.c.round, updates.c.accepted_at, updates.c.client_id)
        )
        return await self._rows("read run updates", query)

    async def run_rejections(self, run_id: str) -> list[Record]:
        """Every refused update of a run, in the order refused."""
        query = select(rejections).where(rejections.c.run_id == run_id).order_by(rejections.c.id)
        return await self._rows("read rejections", query)

    async def run_declines(self, run_id: str) -> list[Record]:
        """Every declined selection of a run, in order."""
        query = select(declines).where(declines.c.run_id == run_id).order_by(declines.c.id)
        return await self._rows("read declines", query)

    async def run_privacy(self, run_id: str) -> list[Record]:
        """The epsilon each client reported per round of a run."""
        query = select(privacy).where(privacy.c.run_id == run_id).order_by(privacy.c.round, privacy.c.client_id)
        return await self._rows("read privacy", query)

    async def stats(self) -> LogStats:
        """Totals for the gauges: rounds aggregated, updates accepted/rejected, bytes in, last ratio..."""

        async def query(conn: AsyncConnection) -> LogStats:
            aggregated = await conn.scalar(
                select(func.count()).select_from(rounds).where(rounds.c.status == "aggregated")
            )
            accepted, bytes_in, epsilon = (
                await conn.execute(
                    select(func.count(), func.coalesce(func.sum(updates.c.wire_bytes), 0), func.max(updates.c.epsilon))
                )
            ).one()
            by_reason = await conn.execute(select(rejections.c.reason, func.count()).group_by(rejections.c.reason))
            ratio = await conn.scalar(select(updates.c.ratio).order_by(updates.c.accepted_at.desc()).limit(1))
            duration = await conn.scalar(
                select(rounds.c.duration_s)
                .where(rounds.c.aggregated_at.is_not(None))
                .order_by(rounds.c.aggregated_at.desc())
                .limit(1)
            )
            return LogStats(
                rounds_aggregated=int(aggregated or 0),
                updates_accepted=int(accepted),
                rejected_by_reason={str(reason): int(count) for reason, count in by_reason},
                bytes_in=int(bytes_in),
                last_compression_ratio=None if ratio is None else float(ratio),
                epsilon_max=None if epsilon is None else float(epsilon),
                last_aggregation_s=None if duration is None else float(duration),
            )

        return await self._read("read stats", query)


__all__ = ["EventFilter", "LogStats", "SqlApiQueries"]
