"""Read-side projections, applied in the same transaction as the append that records the event.

One projector per event type, registered explicitly in PROJECTORS; the read tables are therefore always
consistent with the log. Timestamps come from the envelope's occurred_at.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, Final

from sqlalchemy import func, select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from contracts.envelope import Envelope
from contracts.events import (
    ClientDeclined,
    ClientEvicted,
    ClientRegistered,
    Event,
    ModelInitialized,
    QuorumReached,
    RoundAggregated,
    RoundFailed,
    RoundStarted,
    RunCompleted,
    RunCreated,
    UpdateAccepted,
    UpdateRejected,
)
from persistence.schema import clients, declines, privacy, rejections, rounds, runs, updates
from persistence.sql_dialect import upsert

Projector = Callable[[AsyncConnection, Any, float], Awaitable[None]]

# RunCompleted reasons that mean an operator or an error ended the run rather than its own criteria.
STOPPED_REASONS: Final = frozenset({"stopped", "cancelled", "aborted", "error"})


def _dialect(conn: AsyncConnection) -> str:
    return conn.dialect.name


async def _run_created(conn: AsyncConnection, e: RunCreated, at: float) -> None:
    values: dict[str, Any] = {
        "run_id": e.run_id,
        "config": e.config,
        "status": "running",
        "reason": None,
        "rounds_completed": 0,
        "model_version": None,
        "model_digest": None,
        "metrics": None,
        "created_at": at,
        "updated_at": at,
    }
    await conn.execute(upsert(_dialect(conn), runs, values, ["run_id"]))


async def _model_initialized(conn: AsyncConnection, e: ModelInitialized, at: float) -> None:
    await conn.execute(
        update(runs)
        .where(runs.c.run_id == e.run_id)
        .values(model_version=e.model_version, model_digest=e.model_digest, updated_at=at)
    )


async def _client_registered(conn: AsyncConnection, e: ClientRegistered, at: float) -> None:
    values: dict[str, Any] = {
        "client_id": e.client_id,
        "capabilities": e.capabilities,
        "registered_at": at,
        "last_seen": at,
        "rounds_joined": 0,
        "epsilon": None,
        "evicted": False,
        "evicted_reason": None,
    }
    changed = ["capabilities", "last_seen"]
    await conn.execute(upsert(_dialect(conn), clients, values, ["client_id"], changed))


async def _client_evicted(conn: AsyncConnection, e: ClientEvicted, at: float) -> None:
    await conn.execute(
        update(clients).where(clients.c.client_id == e.client_id).values(evicted=True, evicted_reason=e.reason)
    )


async def _round_started(conn: AsyncConnection, e: RoundStarted, at: float) -> None:
    # A retried round keeps its number with a new attempt: the row is replaced, not duplicated.
    values: dict[str, Any] = {
        "run_id": e.run_id,
        "round": e.round,
        "attempt": e.attempt,
        "status": "open",
        "model_version": e.model_version,
        "model_digest": e.model_digest,
        "selected": list(e.selected),
        "plans": dict(e.plans),
        "deadline": e.deadline,
        "started_at": at,
    }
    cleared = ["quorum_at", "aggregated_at", "update_ids", "partial", "new_model_version"]
    cleared += ["new_model_digest", "metrics", "duration_s", "failure_reason"]
    values |= dict.fromkeys(cleared)
    changed = [name for name in values if name not in ("run_id", "round")]
    await conn.execute(upsert(_dialect(conn), rounds, values, ["run_id", "round"], changed))
    await conn.execute(update(runs).where(runs.c.run_id == e.run_id).values(updated_at=at))


async def _update_accepted(conn: AsyncConnection, e: UpdateAccepted, at: float) -> None:
    values: dict[str, Any] = {
        "update_id": e.update_id,
        "run_id": e.run_id,
        "round": e.round,
        "client_id": e.client_id,
        "num_samples": e.num_samples,
        "digest": e.digest,
        "wire_bytes": e.wire_bytes,
        "raw_bytes": e.raw_bytes,
        "ratio": e.ratio,
        "epsilon": e.epsilon,
        "metrics": e.metrics,
        "late": e.late,
        "model_version": e.model_version if e.model_version >= 0 else None,  # -1: written before it was recorded
        "accepted_at": at,
    }
    keys = ["run_id", "round", "client_id"]
    changed = [name for name in values if name not in keys]
    await conn.execute(upsert(_dialect(conn), updates, values, keys, changed))
    if e.epsilon is not None:
        spent = {"run_id": e.run_id, "client_id": e.client_id, "round": e.round, "epsilon": e.epsilon}
        await conn.execute(upsert(_dialect(conn), privacy, spent, ["run_id", "client_id", "round"], ["epsilon"]))
    seen: dict[str, Any] = {"last_seen": at, "rounds_joined": clients.c.rounds_joined + 1}
    if e.epsilon is not None:
        seen["epsilon"] = e.epsilon
    await conn.execute(update(clients).where(clients.c.client_id == e.client_id).values(**seen))


async def _update_rejected(conn: AsyncConnection, e: UpdateRejected, at: float) -> None:
    row = {"run_id": e.run_id, "round": e.round, "client_id": e.client_id, "reason": e.reason}
    await conn.execute(rejections.insert().values(**row, detail=e.detail, at=at))
    await _seen(conn, e.client_id, at)


async def _client_declined(conn: AsyncConnection, e: ClientDeclined, at: float) -> None:
    row = {"run_id": e.run_id, "round": e.round, "client_id": e.client_id, "reason": e.reason}
    await conn.execute(declines.insert().values(**row, at=at))
    await _seen(conn, e.client_id, at)


async def _quorum_reached(conn: AsyncConnection, e: QuorumReached, at: float) -> None:
    await conn.execute(
        update(rounds)
        .where(rounds.c.run_id == e.run_id, rounds.c.round == e.round)
        .values(status="quorum", quorum_at=at, update_ids=list(e.update_ids), partial=e.partial)
    )


async def _round_aggregated(conn: AsyncConnection, e: RoundAggregated, at: float) -> None:
    row = [rounds.c.run_id == e.run_id, rounds.c.round == e.round]
    if e.attempt:  # an attempt that failed meanwhile (past its aggregation deadline) changes nothing
        row += [rounds.c.attempt == e.attempt, rounds.c.status != "failed"]
    result = await conn.execute(
        update(rounds)
        .where(*row)
        .values(
            status="aggregated",
            aggregated_at=at,
            new_model_version=e.model_version,
            new_model_digest=e.model_digest,
            metrics=e.metrics,
            duration_s=e.duration_s,
        )
    )
    if not result.rowcount:
        return
    aggregated = (
        select(func.count())
        .select_from(rounds)
        .where(rounds.c.run_id == e.run_id, rounds.c.status == "aggregated")
        .scalar_subquery()
    )
    await conn.execute(
        update(runs)
        .where(runs.c.run_id == e.run_id)
        .values(
            model_version=e.model_version,
            model_digest=e.model_digest,
            metrics=e.metrics,
            rounds_completed=aggregated,
            updated_at=at,
        )
    )


async def _round_failed(conn: AsyncConnection, e: RoundFailed, at: float) -> None:
    await conn.execute(
        update(rounds)
        .where(rounds.c.run_id == e.run_id, rounds.c.round == e.round, rounds.c.attempt == e.attempt)
        .values(status="failed", failure_reason=e.reason)
    )
    await conn.execute(update(runs).where(runs.c.run_id == e.run_id).values(updated_at=at))


async def _run_completed(conn: AsyncConnection, e: RunCompleted, at: float) -> None:
    status = "stopped" if e.reason in STOPPED_REASONS else "completed"
    values: dict[str, Any] = {"status": status, "reason": e.reason, "rounds_completed": e.rounds}
    if e.metrics:
        values["metrics"] = e.metrics
    await conn.execute(update(runs).where(runs.c.run_id == e.run_id).values(**values, updated_at=at))


async def _seen(conn: AsyncConnection, client_id: str, at: float) -> None:
    await conn.execute(update(clients).where(clients.c.client_id == client_id).values(last_seen=at))


PROJECTORS: Final[dict[type[Event], Projector]] = {
    RunCreated: _run_created,
    ModelInitialized: _model_initialized,
    ClientRegistered: _client_registered,
    ClientEvicted: _client_evicted,
    RoundStarted: _round_started,
    UpdateAccepted: _update_accepted,
    UpdateRejected: _update_rejected,
    ClientDeclined: _client_declined,
    QuorumReached: _quorum_reached,
    RoundAggregated: _round_aggregated,
    RoundFailed: _round_failed,
    RunCompleted: _run_completed,
}


async def project(conn: AsyncConnection, envelope: Envelope) -> None:
    """Apply one recorded event to the read tables, inside the caller's transaction."""
    await PROJECTORS[type(envelope.event)](conn, envelope.event, envelope.occurred_at)


__all__ = ["PROJECTORS", "STOPPED_REASONS", "project"]
