"""Every accepted update accounted for, read from a run's event log alone (stream order).

Definitions (all counts must be 0 after a run, however many faults it went through):

- lost: an on-time UpdateAccepted (late=False) of a round that closed by quorum but not listed in that
  round's QuorumReached; an on-time UpdateAccepted appended after its round's QuorumReached (it should
  have been marked late); or an id listed in a QuorumReached that is no on-time UpdateAccepted of that
  round appended before it (the aggregate would lack or invent an update).
- duplicated: a second UpdateAccepted for the same (run, round, client), or the same update_id twice.
- aggregated_twice: a round with more than one RoundAggregated (or more than one QuorumReached).
- unexpected: an UpdateAccepted for a round that was never started, for a round other than the one open
  at that point of the log, or from a client not selected in the round's attempt open at that point.

Also checked: every round that reached quorum was aggregated from exactly the listed updates
(RoundAggregated.num_updates == len(update_ids)): `unaggregated` counts the rounds where not.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

from contracts.events import (
    Event,
    QuorumReached,
    RoundAggregated,
    RoundFailed,
    RoundStarted,
    UpdateAccepted,
    UpdateRejected,
)


@dataclass(frozen=True, slots=True, kw_only=True)
class Accounting:
    """What the log says about the updates of one run; `problems` explains every non-zero count."""

    lost: int
    duplicated: int
    aggregated_twice: int
    unexpected: int
    unaggregated: int
    accepted: int
    late: int
    rejected: dict[str, int]
    rounds_started: int
    attempts: int
    rounds_failed: int
    rounds_aggregated: int
    problems: tuple[str, ...] = field(default_factory=tuple)

    @property
    def clean(self) -> bool:
        """True when no update was lost, duplicated, aggregated twice, unexpected or left unaggregated."""
        return not (self.lost or self.duplicated or self.aggregated_twice or self.unexpected or self.unaggregated)


@dataclass(slots=True)
class _Round:
    attempt: int
    selected: frozenset[str]
    on_time: dict[str, str] = field(default_factory=dict)  # update_id -> client, before QuorumReached
    quorum: QuorumReached | None = None


def account(events: list[Event]) -> Accounting:
    """Walk the stream once and count lost, duplicated, aggregated-twice and unexpected updates."""
    problems: list[str] = []
    rounds: dict[int, _Round] = {}
    current: int | None = None
    seen_ids: Counter[str] = Counter()
    seen_clients: Counter[tuple[str, int, str]] = Counter()
    quorums: Counter[tuple[int, int]] = Counter()
    aggregated: dict[int, list[RoundAggregated]] = {}
    lost = unexpected = late = 0
    for event in events:
        if isinstance(event, RoundStarted):
            # A retry (new attempt) starts over: a failed attempt aggregated nothing.
            rounds[event.round] = _Round(event.attempt, frozenset(event.selected))
            current = event.round
        elif isinstance(event, UpdateAccepted):
            seen_ids[event.update_id] += 1
            seen_clients[(event.run_id, event.round, event.client_id)] += 1
            late += event.late
            state = rounds.get(event.round)
            if state is None or event.round != current or event.client_id not in state.selected:
                unexpected += 1
                problems.append(f"unexpected: {event.client_id} accepted for round {event.round} (open: {current})")
            elif not event.late and state.quorum is not None:
                lost += 1
                problems.append(f"lost: {event.update_id} accepted on time after round {event.round}'s quorum")
            elif not event.late:
                state.on_time[event.update_id] = event.client_id
        elif isinstance(event, QuorumReached):
            state = rounds.get(event.round)
            quorums[(event.round, state.attempt if state else 0)] += 1
            if state is None:
                problems.append(f"quorum for round {event.round}, never started")
                lost += len(event.update_ids)
                continue
            state.quorum = event
            listed = set(event.update_ids)
            for update_id in listed - set(state.on_time):
                lost += 1
                problems.append(f"lost: round {event.round} quorum lists {update_id}, no on-time acceptance before it")
            for update_id in set(state.on_time) - listed:
                lost += 1
                problems.append(f"lost: round {event.round} accepted {update_id} on time, quorum left it out")
        elif isinstance(event, RoundAggregated):
            aggregated.setdefault(event.round, []).append(event)
    duplicated = sum(n - 1 for n in seen_ids.values()) + sum(n - 1 for n in seen_clients.values())
    problems += [f"duplicated: update {u} accepted {n} times" for u, n in seen_ids.items() if n > 1]
    problems += [f"duplicated: {c} accepted {n} times in round {r}" for (_, r, c), n in seen_clients.items() if n > 1]
    twice = {r for r, found in aggregated.items() if len(found) > 1} | {r for (r, _), n in quorums.items() if n > 1}
    problems += [f"aggregated twice: round {r}" for r in sorted(twice)]
    unaggregated = 0
    for number, state in sorted(rounds.items()):
        if state.quorum is None:
            continue
        done = aggregated.get(number, [])
        if not done or done[0].num_updates != len(state.quorum.update_ids):
            unaggregated += 1
            problems.append(f"round {number}: quorum of {len(state.quorum.update_ids)} aggregated as {done}")
    rejected = Counter(e.reason for e in events if isinstance(e, UpdateRejected))
    return Accounting(
        lost=lost,
        duplicated=duplicated,
        aggregated_twice=len(twice),
        unexpected=unexpected,
        unaggregated=unaggregated,
        accepted=sum(seen_ids.values()),
        late=late,
        rejected=dict(rejected),
        rounds_started=len(rounds),
        attempts=sum(1 for e in events if isinstance(e, RoundStarted)),
        rounds_failed=sum(1 for e in events if isinstance(e, RoundFailed)),
        rounds_aggregated=len(aggregated),
        problems=tuple(problems),
    )
