"""The accounting of the fault suite catches each kind of mistake it is meant to catch (no services needed)."""

from __future__ import annotations

from contracts.events import Event, QuorumReached, RoundAggregated, RoundStarted, UpdateAccepted
from tests.faults.accounting import account

RUN = "run-1"


def started(round_: int, selected: tuple[str, ...] = ("a", "b", "c"), attempt: int = 1) -> RoundStarted:
    return RoundStarted(
        run_id=RUN,
        round=round_,
        attempt=attempt,
        model_version=round_ - 1,
        model_digest="d",
        selected=selected,
        deadline=0.0,
        train={},
    )


def accepted(round_: int, client: str, update_id: str | None = None, *, late: bool = False) -> UpdateAccepted:
    return UpdateAccepted(
        run_id=RUN,
        round=round_,
        update_id=update_id or f"u{round_}{client}",
        client_id=client,
        num_samples=10,
        digest="x",
        wire_bytes=1,
        raw_bytes=1,
        ratio=1.0,
        epsilon=None,
        metrics={},
        late=late,
    )


def quorum(round_: int, *update_ids: str) -> QuorumReached:
    return QuorumReached(run_id=RUN, round=round_, model_version=round_ - 1, update_ids=update_ids, partial=False)


def aggregated(round_: int, updates: int) -> RoundAggregated:
    return RoundAggregated(
        run_id=RUN, round=round_, model_version=round_, model_digest="m", num_updates=updates, metrics={}, duration_s=0
    )


def clean_round() -> list[Event]:
    return [
        started(1),
        accepted(1, "a"),
        accepted(1, "b"),
        quorum(1, "u1a", "u1b"),
        accepted(1, "c", late=True),
        aggregated(1, 2),
    ]


def test_a_round_with_a_late_update_after_its_quorum_is_clean() -> None:
    result = account(clean_round())

    assert result.clean and (result.accepted, result.late) == (3, 1)


def test_an_on_time_update_left_out_of_the_quorum_is_lost() -> None:
    events = clean_round()
    events[3] = quorum(1, "u1a")
    events[5] = aggregated(1, 1)

    assert account(events).lost == 1


def test_an_update_accepted_on_time_after_the_quorum_is_lost() -> None:
    events = clean_round()
    events[4] = accepted(1, "c", late=False)

    assert account(events).lost == 1


def test_a_quorum_naming_an_update_never_accepted_is_lost() -> None:
    events = clean_round()
    events[3] = quorum(1, "u1a", "u1b", "ghost")
    events[5] = aggregated(1, 3)

    assert account(events).lost == 1


def test_the_same_client_accepted_twice_in_a_round_is_duplicated() -> None:
    events = clean_round()
    events.insert(3, accepted(1, "a", "another-id"))

    result = account(events)

    assert result.duplicated == 1 and result.lost == 1  # the second id is also missing from the quorum


def test_two_aggregations_of_one_round_are_counted() -> None:
    assert account([*clean_round(), aggregated(1, 2)]).aggregated_twice == 1


def test_updates_from_unselected_clients_or_unstarted_rounds_are_unexpected() -> None:
    events = [*clean_round(), accepted(1, "z"), accepted(2, "a")]

    assert account(events).unexpected == 2


def test_a_quorum_that_was_never_aggregated_is_unaggregated() -> None:
    assert account(clean_round()[:-1]).unaggregated == 1


def test_a_retried_round_is_judged_by_its_last_attempt() -> None:
    events: list[Event] = [
        started(1),
        started(1, ("b", "c"), attempt=2),
        accepted(1, "b"),
        quorum(1, "u1b"),
        aggregated(1, 1),
    ]

    result = account(events)

    assert result.clean and result.attempts == 2
