"""Queries on the projections for the API and the CLI, and the blob retention policy.

Plain functions of a connection; SqlEventLog wraps them in retried reads / a write transaction.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import Row, delete, func, select, union
from sqlalchemy.ext.asyncio import AsyncConnection

from contracts.errors import ConfigError
from persistence.schema import blobs, clients, rounds, runs, updates

Record = dict[str, Any]


def _plain(row: Row[Any]) -> Record:
    return dict(row._mapping)


async def list_runs(conn: AsyncConnection) -> list[Record]:
    """Every run, newest first."""
    result = await conn.execute(select(runs).order_by(runs.c.created_at.desc(), runs.c.run_id))
    return [_plain(row) for row in result]


async def get_run(conn: AsyncConnection, run_id: str) -> Record | None:
    """One run, or None when there is no such run."""
    row = (await conn.execute(select(runs).where(runs.c.run_id == run_id))).first()
    return None if row is None else _plain(row)


async def list_rounds(conn: AsyncConnection, run_id: str) -> list[Record]:
    """The rounds of a run in round order."""
    result = await conn.execute(select(rounds).where(rounds.c.run_id == run_id).order_by(rounds.c.round))
    return [_plain(row) for row in result]


async def list_clients(conn: AsyncConnection) -> list[Record]:
    """Every registered client, by id."""
    result = await conn.execute(select(clients).order_by(clients.c.client_id))
    return [_plain(row) for row in result]


async def list_updates(conn: AsyncConnection, run_id: str, round_: int) -> list[Record]:
    """The accepted updates of one round, in acceptance order."""
    result = await conn.execute(
        select(updates)
        .where(updates.c.run_id == run_id, updates.c.round == round_)
        .order_by(updates.c.accepted_at, updates.c.client_id)
    )
    return [_plain(row) for row in result]


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


__all__ = ["get_run", "list_clients", "list_rounds", "list_runs", "list_updates", "prune_blobs"]
