"""Where a run stands, read from its log: the moments a fault can be aimed at."""

from __future__ import annotations

from contracts.events import Event, QuorumReached, RoundAggregated, RoundFailed, RoundStarted, RunCompleted
from tests.faults.schedule import Trigger

_MILESTONES = (RoundStarted, QuorumReached, RoundFailed, RunCompleted)


def completed(events: list[Event]) -> bool:
    return any(isinstance(e, RunCompleted) for e in events)


def open_round(events: list[Event]) -> RoundStarted | None:
    """The RoundStarted of the attempt that is open now (clients train and upload), if any."""
    last = next((e for e in reversed(events) if isinstance(e, _MILESTONES)), None)
    return last if isinstance(last, RoundStarted) else None


def pending_quorum(events: list[Event]) -> QuorumReached | None:
    """The QuorumReached of a round that waits for its aggregation, if any."""
    last = next((e for e in reversed(events) if isinstance(e, _MILESTONES)), None)
    if not isinstance(last, QuorumReached):
        return None
    done = any(isinstance(e, RoundAggregated) and e.round == last.round for e in events)
    return None if done else last


def current_round(events: list[Event]) -> int | None:
    """The round of the latest RoundStarted (None before round 1)."""
    return next((e.round for e in reversed(events) if isinstance(e, RoundStarted)), None)


def fired(trigger: Trigger, events: list[Event]) -> bool:
    """Whether the run is at the moment `trigger` waits for."""
    if trigger is Trigger.ROUND_OPEN:
        return open_round(events) is not None
    if trigger is Trigger.QUORUM_PENDING:
        return pending_quorum(events) is not None
    return True
