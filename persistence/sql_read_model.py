"""The read side of the SQL log: queries on the projections (for the API, the CLI and the reports) and
the blob retention policy.

`SqlReadModel` wraps every query in a retried read over the log's AsyncEngine; `prune_blobs` is the one
write, run by SqlEventLog inside its own write transaction.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

from sqlalchemy import Row, delete, func, select, union
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from contracts.errors import ConfigError, NotFound
from persistence.errors import IDEMPOTENT_IO, RetryPolicy, retried, translated
from persistence.schema import blobs, clients, declines, events, privacy, rejections, rounds, runs, updates
from persistence.sql_engine import autocommit

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


class SqlReadModel:
    """Every read of the projections and the log's pages, over an engine the caller owns."""

    def __init__(self, engine: AsyncEngine, *, retry: RetryPolicy = IDEMPOTENT_IO) -> None:
        self._engine = autocommit(engine)  # a read is one round trip per statement: no BEGIN, no ROLLBACK
        self._retry = retry

    async def read(self, action: str, query: Callable[[AsyncConnection], Awaitable[T]]) -> T:
        """`query` on a connection of its own, its errors translated and transient ones retried."""

        async def once() -> T:
            with translated(action):
                async with self._engine.connect() as conn:
                    return await query(conn)

        return await retried(self._retry, once)

    async def _rows(self, action: str, query: Any) -> list[Record]:
        async def rows(conn: AsyncConnection) -> list[Record]:
            return [_plain(row) for row in await conn.execute(query)]

        return await self.read(action, rows)

    async def _one(self, action: str, query: Any, missing: str) -> Record:
        found = await self._rows(action, query)
        if not found:
            raise NotFound(missing)
        return found[0]

    async def runs(self) -> list[Record]:
        """Every run, newest first."""
        return await self._rows("read runs", select(runs).order_by(runs.c.created_at.desc(), runs.c.run_id))

    async def run(self, run_id: str) -> Record:
        """One run's row; NotFound when there is no such run."""
        return await self._one("read run", select(runs).where(runs.c.run_id == run_id), f"run {run_id}")

    async def rounds(self, run_id: str) -> list[Record]:
        """The rounds of a run in round order."""
        return await self._rows("read rounds", select(rounds).where(rounds.c.run_id == run_id).order_by(rounds.c.round))

    async def clients(self) -> list[Record]:
        """Every registered client, by id."""
        return await self._rows("read clients", select(clients).order_by(clients.c.client_id))

    async def client(self, client_id: str) -> Record:
        """One client's row; NotFound when there is no such client."""
        query = select(clients).where(clients.c.client_id == client_id)
        return await self._one("read client", query, f"client {client_id}")

    async def updates(self, run_id: str, round_: int | None = None) -> list[Record]:
        """The accepted updates of a run (or of one round), by round then acceptance time."""
        query = select(updates).where(updates.c.run_id == run_id)
        if round_ is not None:
            query = query.where(updates.c.round == round_)
        order = (updates.c.round, updates.c.accepted_at, updates.c.client_id)
        return await self._rows("read updates", query.order_by(*order))

    async def rejections(self, run_id: str) -> list[Record]:
        """Every refused update of a run, in the order refused."""
        query = select(rejections).where(rejections.c.run_id == run_id).order_by(rejections.c.id)
        return await self._rows("read rejections", query)

    async def declines(self, run_id: str) -> list[Record]:
        """Every declined selection of a run, in order."""
        query = select(declines).where(declines.c.run_id == run_id).order_by(declines.c.id)
        return await self._rows("read declines", query)

    async def privacy(self, run_id: str) -> list[Record]:
        """The epsilon each client reported per round of a run."""
        query = select(privacy).where(privacy.c.run_id == run_id).order_by(privacy.c.round, privacy.c.client_id)
        return await self._rows("read privacy", query)

    async def head(self) -> int:
        """The position of the last event (0 for an empty log); also the readiness probe."""
        value = await self.read("read head", lambda conn: conn.scalar(select(func.max(events.c.position))))
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
        value = await self.read("read stream version", lambda conn: conn.scalar(query))
        return int(value or 0)

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

        return await self.read("read stats", query)


async def prune_blobs(conn: AsyncConnection, keep_rounds: int) -> int:
    """Delete the blobs referenced only by rounds older than each run's last `keep_rounds` rounds.

    Kept: updates and models of the last rounds, and each run's current model. Blobs that no projection
    references (an upload whose event is not yet appended) are left alone. Returns how many were deleted.
    """
    if keep_rounds < 0:
        raise ConfigError("keep_rounds", f"must be >= 0, got {keep_rounds}")

    def cutoff(table: Any) -> Any:
        other = rounds.alias("latest")  # an alias, so that rounds can correlate with itself
        latest = select(func.max(other.c.round)).where(other.c.run_id == table.c.run_id)
        return latest.scalar_subquery() - keep_rounds

    def referenced(old: bool) -> Any:
        def side(table: Any, column: Any) -> Any:
            in_range = table.c.round <= cutoff(table) if old else table.c.round > cutoff(table)
            return select(column.label("digest")).where(in_range, column.is_not(None))

        return [
            side(updates, updates.c.digest),
            side(rounds, rounds.c.model_digest),
            side(rounds, rounds.c.new_model_digest),
        ]

    current = select(runs.c.model_digest.label("digest")).where(runs.c.model_digest.is_not(None))
    keep = union(*referenced(old=False), current)
    old = union(*referenced(old=True))
    result = await conn.execute(
        delete(blobs).where(
            blobs.c.digest.in_(select(old.subquery().c.digest)),
            blobs.c.digest.not_in(select(keep.subquery().c.digest)),
        )
    )
    return int(result.rowcount)


__all__ = ["EventFilter", "LogStats", "SqlReadModel", "prune_blobs"]
