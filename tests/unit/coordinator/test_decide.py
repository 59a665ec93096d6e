"""The pure decider, branch by branch: state folded from events in, events out; no I/O, no clock."""

from __future__ import annotations

import copy
import dataclasses

import pytest

from contracts.config import PrivacyConfig, RoundConfig, RunConfig
from contracts.events import (
    DECLINE_PRIVACY_BUDGET,
    ClientDeclined,
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
from contracts.run_state import RunState, state_from_created
from contracts.update_validation import RejectReason
from contracts.uploads import UploadHeader
from services.coordinator import decide
from services.coordinator.decide import ClientPool
from services.coordinator.errors import NoRoundOpen, UploadRefused

RUN = "r1"
CLIENTS = ("c0", "c1", "c2", "c3")
POOL = ClientPool(active=frozenset(CLIENTS))


def config(**round_options: object) -> RunConfig:
    options: dict[str, object] = {"timeout_s": 100.0, **round_options}
    return RunConfig(clients=4, rounds=3, privacy=PrivacyConfig(enabled=False), round=RoundConfig(**options))  # type: ignore[arg-type]


def folded(cfg: RunConfig, *events: tuple[Event, float]) -> RunState:
    """The state the coordinator would hold after these (event, occurred_at) pairs."""
    run = state_from_created(RunCreated(run_id=RUN, config=cfg.to_dict()))
    for event, at in events:
        run.apply(event, at)
    return run


def initialized() -> tuple[Event, float]:
    return ModelInitialized(run_id=RUN, model_version=0, model_digest="m0", num_parameters=10), 0.0


def started(round_: int = 1, attempt: int = 1, *, at: float = 0.0, version: int = 0) -> tuple[Event, float]:
    event = RoundStarted(
        run_id=RUN, round=round_, attempt=attempt, model_version=version, model_digest=f"m{version}",
        selected=CLIENTS, deadline=at + 100.0, train={},
    )  # fmt: skip
    return event, at


def accepted(client: str, *, at: float, round_: int = 1, late: bool = False) -> tuple[Event, float]:
    event = UpdateAccepted(
        run_id=RUN, round=round_, update_id=f"u-{client}", client_id=client, num_samples=10, digest=f"d-{client}",
        wire_bytes=100, raw_bytes=400, ratio=4.0, epsilon=None, metrics={"loss": 1.0}, late=late,
    )  # fmt: skip
    return event, at


def aggregated(round_: int, accuracy: float) -> tuple[Event, float]:
    event = RoundAggregated(
        run_id=RUN, round=round_, model_version=round_, model_digest=f"m{round_}", num_updates=4,
        metrics={"accuracy": accuracy}, duration_s=1.0,
    )  # fmt: skip
    return event, 0.0


def header(client: str = "c0", *, round_: int = 1, version: int = 0, size: int = 100) -> UploadHeader:
    return UploadHeader(
        run_id=RUN, round=round_, client_id=client, base_model_version=version, num_samples=10, codec="int8",
        total_size=size, sha256="a" * 64, raw_bytes=400,
    )  # fmt: skip


def kinds(events: list[Event]) -> list[str]:
    return [type(e).__name__ for e in events]


# -- starting -------------------------------------------------------------------------------------------------
def test_nothing_starts_before_the_initial_model() -> None:
    assert decide.due(folded(config()), POOL, now=1.0) == []


def test_the_first_round_starts_on_the_initial_model_with_a_typed_plan_and_a_deadline() -> None:
    run = folded(config(), initialized())

    [event] = decide.due(run, POOL, now=5.0)

    assert isinstance(event, RoundStarted)
    assert (event.round, event.attempt, event.model_version, event.model_digest) == (1, 1, 0, "m0")
    assert event.selected == CLIENTS and event.deadline == 105.0


def test_no_round_starts_without_clients_and_the_run_waits() -> None:
    run = folded(config(), initialized())

    assert decide.due(run, ClientPool(active=frozenset()), now=1.0) == []


def test_clients_out_of_budget_are_not_selected_and_when_all_are_the_run_ends() -> None:
    declines = [(ClientDeclined(run_id=RUN, round=1, client_id=c, reason=DECLINE_PRIVACY_BUDGET), 1.0) for c in CLIENTS]
    some = folded(config(), initialized(), started(), *declines[:2])
    everyone = folded(config(), initialized(), started(), *declines)
    for run in (some, everyone):
        run.apply(RoundFailed(run_id=RUN, round=1, attempt=1, reason="too few updates"), 2.0)

    [retry] = decide.due(some, POOL, now=3.0)
    [end] = decide.due(everyone, POOL, now=3.0)

    assert isinstance(retry, RoundStarted) and set(retry.selected) == {"c2", "c3"}
    assert isinstance(end, RunCompleted) and end.reason == "budget"


# -- closing --------------------------------------------------------------------------------------------------
def test_an_open_round_below_the_quorum_waits() -> None:
    run = folded(config(quorum=0.75), initialized(), started(), accepted("c0", at=1.0))

    assert decide.due(run, POOL, now=2.0) == []


def test_the_quorum_closes_the_round_carrying_what_the_aggregator_needs() -> None:
    run = folded(config(quorum=0.5), initialized(), started(), accepted("c0", at=1.0), accepted("c1", at=2.0))

    [event] = decide.due(run, POOL, now=2.0)

    assert isinstance(event, QuorumReached) and event.partial
    assert event.update_ids == ("u-c0", "u-c1") and event.update_digests == ("d-c0", "d-c1")
    assert event.sample_counts == (10, 10) and event.base_model_digest == "m0" and event.train_loss == 1.0


def test_the_grace_period_runs_from_the_update_that_met_the_quorum() -> None:
    run = folded(
        config(quorum=0.5, grace_s=5.0), initialized(), started(), accepted("c0", at=1.0), accepted("c1", at=3.0)
    )

    assert run.current is not None and run.current.quorum_at == 3.0
    assert decide.due(run, POOL, now=7.9) == []
    assert kinds(decide.due(run, POOL, now=8.0)) == ["QuorumReached"]


def test_a_round_everyone_answered_closes_at_once_despite_the_grace_period() -> None:
    answers = [accepted(c, at=1.0) for c in CLIENTS]
    run = folded(config(quorum=0.5, grace_s=50.0), initialized(), started(), *answers)

    assert kinds(decide.due(run, POOL, now=1.0)) == ["QuorumReached"]


def test_the_deadline_closes_with_min_updates_and_fails_below() -> None:
    enough = folded(config(quorum=1.0, min_updates=1), initialized(), started(), accepted("c0", at=1.0))
    short = folded(config(quorum=1.0, min_updates=2), initialized(), started(), accepted("c0", at=1.0))

    assert kinds(decide.due(enough, POOL, now=100.0)) == ["QuorumReached"]
    [failed] = decide.due(short, POOL, now=100.0)
    assert isinstance(failed, RoundFailed) and failed.reason == "deadline"


def test_a_closed_round_is_not_closed_twice() -> None:
    run = folded(config(quorum=0.25), initialized(), started(), accepted("c0", at=1.0))
    run.apply(decide.due(run, POOL, now=1.0)[0], 1.0)

    assert decide.due(run, POOL, now=200.0) == []


# -- failure, retry, the next round, the end ------------------------------------------------------------------
def test_a_failed_round_is_retried_with_a_new_attempt_until_max_attempts() -> None:
    failed = (RoundFailed(run_id=RUN, round=1, attempt=1, reason="deadline"), 100.0)
    last = (RoundFailed(run_id=RUN, round=1, attempt=2, reason="deadline"), 200.0)

    [retry] = decide.due(folded(config(max_attempts=2), initialized(), started(), failed), POOL, now=100.0)
    [end] = decide.due(
        folded(config(max_attempts=2), initialized(), started(), failed, started(1, 2, at=100.0), last), POOL, 200.0
    )

    assert isinstance(retry, RoundStarted) and (retry.round, retry.attempt) == (1, 2)
    assert isinstance(end, RunCompleted) and end.reason == "failed"


def test_an_aggregated_round_opens_the_next_on_the_new_model() -> None:
    run = folded(config(), initialized(), started(), aggregated(1, 0.5))

    [event] = decide.due(run, POOL, now=10.0)

    assert isinstance(event, RoundStarted) and (event.round, event.model_version, event.model_digest) == (2, 1, "m1")


@pytest.mark.parametrize(
    ("options", "accuracies", "reason"),
    [({}, [0.1, 0.2, 0.3], "max_rounds"), ({"target_accuracy": 0.9}, [0.95], "target")],
)
def test_convergence_completes_the_run(options: dict[str, float], accuracies: list[float], reason: str) -> None:
    cfg = RunConfig(clients=4, rounds=3, privacy=PrivacyConfig(enabled=False), **options)  # type: ignore[arg-type]
    history = [initialized()]
    for round_, accuracy in enumerate(accuracies, start=1):
        history += [started(round_, version=round_ - 1), aggregated(round_, accuracy)]

    [event] = decide.due(folded(cfg, *history), POOL, now=1.0)

    assert isinstance(event, RunCompleted) and event.reason == reason and event.metrics["accuracy"] == accuracies[-1]


def test_a_completed_run_decides_nothing_more() -> None:
    run = folded(config(), initialized(), started())
    run.apply(decide.stop(run)[0], 1.0)

    assert decide.due(run, POOL, now=500.0) == [] and decide.stop(run) == []


# -- uploads and declines -------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("upload", "reason"),
    [
        (header(round_=2), RejectReason.ROUND_CLOSED),
        (header("stranger"), RejectReason.NOT_SELECTED),
        (header(version=7), RejectReason.STALE_MODEL),
        (header(size=1 << 40), RejectReason.TOO_LARGE),
    ],
)
def test_the_header_alone_refuses_an_upload(upload: UploadHeader, reason: RejectReason) -> None:
    run = folded(config(), initialized(), started())

    refusal = decide.header_refusal(run, upload.client_id, upload)

    assert refusal is not None and refusal.reason is reason


def test_a_second_update_from_a_client_is_a_duplicate() -> None:
    run = folded(config(), initialized(), started(), accepted("c0", at=1.0))

    refusal = decide.header_refusal(run, "c0", header("c0"))

    assert refusal is not None and refusal.reason is RejectReason.DUPLICATE
    with pytest.raises(UploadRefused):
        decide.accept(run, header("c0"), update_id="x", wire_bytes=100, pool=POOL, now=2.0)


def test_accepting_the_update_that_meets_the_quorum_closes_the_round_in_the_same_append() -> None:
    run = folded(config(quorum=0.5), initialized(), started(), accepted("c0", at=1.0))
    before = copy.deepcopy(run)

    events = decide.accept(run, header("c1"), update_id="u-c1", wire_bytes=100, pool=POOL, now=2.0)

    assert kinds(events) == ["UpdateAccepted", "QuorumReached"]
    assert run == before  # the decider folded a copy, never the state it was given


def test_an_update_after_the_quorum_is_accepted_as_late_and_not_aggregated() -> None:
    run = folded(config(quorum=0.25), initialized(), started(), accepted("c0", at=1.0))
    run.apply(decide.due(run, POOL, now=1.0)[0], 1.0)

    [event] = decide.accept(run, header("c1"), update_id="u-c1", wire_bytes=100, pool=POOL, now=2.0)

    assert isinstance(event, UpdateAccepted) and event.late


def test_a_rejection_counts_as_an_answer_and_can_end_the_round() -> None:
    run = folded(config(quorum=1.0), initialized(), started(), *[accepted(c, at=1.0) for c in CLIENTS[:3]])
    refusal = UploadRefused(RejectReason.NOT_FINITE, "nan")

    events = decide.reject(run, header("c3"), refusal, POOL, now=2.0)

    assert kinds(events) == ["UpdateRejected", "QuorumReached"]
    assert isinstance(events[0], UpdateRejected) and events[0].reason == "not_finite"


def test_a_decline_outside_the_open_round_is_refused() -> None:
    run = folded(config(), initialized(), started())

    with pytest.raises(NoRoundOpen):
        decide.decline(run, "c0", 2, "busy", POOL, now=1.0)
    with pytest.raises(NoRoundOpen):
        decide.decline(run, "stranger", 1, "busy", POOL, now=1.0)
    assert kinds(decide.decline(run, "c0", 1, "busy", POOL, now=1.0)) == ["ClientDeclined"]


# -- after the quorum: the aggregation deadline --------------------------------------------------------------
def quorum(at: float, attempt: int = 1) -> tuple[Event, float]:
    event = QuorumReached(
        run_id=RUN, round=1, model_version=0, update_ids=tuple(f"u-{c}" for c in CLIENTS), partial=False,
        attempt=attempt,
    )  # fmt: skip
    return event, at


def test_a_quorum_nobody_aggregates_fails_the_round_at_its_deadline_and_the_retry_follows() -> None:
    cfg = config(aggregation_timeout_s=60.0)
    run = folded(cfg, initialized(), started(), *(accepted(c, at=1.0) for c in CLIENTS), quorum(at=2.0))

    assert decide.due(run, POOL, now=61.9) == []
    [failed] = decide.due(run, POOL, now=62.0)

    assert isinstance(failed, RoundFailed) and (failed.attempt, failed.reason) == (1, decide.AGGREGATION_TIMEOUT)
    [retry] = decide.then(run, [failed], POOL, now=62.0)[1:]
    assert isinstance(retry, RoundStarted) and (retry.round, retry.attempt) == (1, 2)


def test_a_restarted_coordinator_keeps_the_aggregation_deadline_of_the_recorded_quorum() -> None:
    cfg = config(aggregation_timeout_s=60.0)
    events = [initialized(), started(), *(accepted(c, at=1.0) for c in CLIENTS), quorum(at=2.0)]

    restarted = folded(cfg, *events)  # a new process folds the same events

    assert restarted.current is not None and restarted.current.closed_at == 2.0
    assert kinds(decide.due(restarted, POOL, now=62.0)) == ["RoundFailed"]


def test_a_late_aggregation_of_a_failed_attempt_does_not_count_for_the_retry() -> None:
    cfg = config(aggregation_timeout_s=60.0)
    failed = RoundFailed(run_id=RUN, round=1, attempt=1, reason=decide.AGGREGATION_TIMEOUT)
    run = folded(cfg, initialized(), started(), *(accepted(c, at=1.0) for c in CLIENTS), quorum(at=2.0), (failed, 62.0))
    run.apply(*started(1, 2, at=62.0))
    stale = RoundAggregated(
        run_id=RUN, round=1, model_version=1, model_digest="m1-stale", num_updates=4, metrics={}, duration_s=70.0,
        attempt=1,
    )  # fmt: skip

    run.apply(stale, 70.0)

    assert run.current is not None and not run.current.aggregated and 1 not in run.models
    stale_failure = RoundFailed(run_id=RUN, round=1, attempt=1, reason="aggregation failed: late")
    run.apply(stale_failure, 71.0)
    assert not run.current.failed


# -- what an update declares ---------------------------------------------------------------------------------
def private_config(epsilon: float = 3.0) -> RunConfig:
    return RunConfig(clients=4, rounds=3, privacy=PrivacyConfig(epsilon=epsilon), round=RoundConfig(timeout_s=100.0))


@pytest.mark.parametrize(
    ("declared", "reason"),
    [(None, RejectReason.EPSILON_MISSING), (3.1, RejectReason.BUDGET_EXCEEDED), (50.0, RejectReason.BUDGET_EXCEEDED)],
)
def test_a_private_run_refuses_a_missing_or_overspent_epsilon(declared: float | None, reason: RejectReason) -> None:
    run = folded(private_config(), initialized(), started())

    refusal = decide.header_refusal(run, "c0", dataclasses.replace(header(), epsilon=declared))

    assert refusal is not None and refusal.reason is reason


def test_an_epsilon_within_budget_or_a_run_without_dp_is_not_refused_for_privacy() -> None:
    private = folded(private_config(), initialized(), started())
    public = folded(config(), initialized(), started())

    assert decide.header_refusal(private, "c0", dataclasses.replace(header(), epsilon=3.0)) is None
    assert decide.header_refusal(public, "c0", header()) is None


def test_a_damaged_upload_is_not_the_clients_answer_but_a_bad_update_is() -> None:
    damaged = UpdateRejected(run_id=RUN, round=1, client_id="c0", reason=RejectReason.DIGEST_MISMATCH.value)
    bad = UpdateRejected(run_id=RUN, round=1, client_id="c1", reason=RejectReason.NOT_FINITE.value)

    run = folded(config(), initialized(), started(), (damaged, 1.0), (bad, 1.0))

    assert run.current is not None and run.current.responded == 1


# -- resuming -------------------------------------------------------------------------------------------------
def test_a_resumed_run_fails_its_open_attempt_and_starts_the_next_at_once_even_past_max_attempts() -> None:
    run = folded(config(max_attempts=2), initialized(), started(attempt=2), accepted("c0", at=1.0))

    failed, retry = decide.resume(run, POOL, now=5.0, since=4.0)

    assert isinstance(failed, RoundFailed) and (failed.attempt, failed.reason) == (2, decide.RESUMED)
    assert isinstance(retry, RoundStarted) and (retry.round, retry.attempt, retry.deadline) == (1, 3, 105.0)


def test_a_resumed_run_with_a_quorum_nobody_aggregated_starts_the_round_again() -> None:
    run = folded(config(), initialized(), started(), *(accepted(c, at=1.0) for c in CLIENTS), quorum(at=2.0))

    assert kinds(decide.resume(run, POOL, now=3.0, since=2.5)) == ["RoundFailed", "RoundStarted"]


def test_resuming_a_run_between_rounds_or_ended_is_what_is_due() -> None:
    between = folded(config(), initialized(), started(), aggregated(1, 0.5))
    ended = folded(config(), initialized(), (RunCompleted(run_id=RUN, reason="stopped", rounds=0, metrics={}), 0.0))

    assert kinds(decide.resume(between, POOL, now=3.0, since=2.5)) == ["RoundStarted"]
    assert decide.resume(ended, POOL, now=3.0, since=2.5) == []


def test_an_attempt_the_resuming_processes_started_themselves_stays_open() -> None:
    """Killed between round 1's aggregation and round 2's start: the new coordinator's first tick starts round 2
    before it is told to resume. That attempt reached the new clients; failing it would hand them round 2 twice."""
    run = folded(config(), initialized(), started(), aggregated(1, 0.5), started(round_=2, at=3.0, version=1))

    assert decide.resume(run, POOL, now=3.5, since=2.5) == []
    assert kinds(decide.resume(run, POOL, now=3.5, since=3.5)) == ["RoundFailed", "RoundStarted"]
