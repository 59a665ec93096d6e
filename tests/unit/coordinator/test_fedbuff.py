"""FedBuff in the pure decider: buffers of K updates from whichever model version, staleness carried to the
aggregator, work handed only to idle clients, late updates carried into the next buffer, too-stale ones refused."""

from __future__ import annotations

import hashlib

from contracts.config import PrivacyConfig, RoundConfig, RunConfig
from contracts.events import (
    SAMPLING_BUFFER,
    ClientDeclined,
    Event,
    ModelInitialized,
    QuorumReached,
    RoundAggregated,
    RoundFailed,
    RoundStarted,
    RunCreated,
    UpdateAccepted,
    UpdateRejected,
)
from contracts.run_state import RunState, state_from_created
from contracts.strategy import FEDBUFF, StrategyConfig
from contracts.update_validation import RejectReason
from contracts.uploads import UploadHeader
from services.coordinator import decide
from services.coordinator.decide import ClientPool

RUN = "r1"
CLIENTS = tuple(f"c{i}" for i in range(6))
POOL = ClientPool(active=frozenset(CLIENTS))


def buffered(*, buffer: int = 2, staleness: int = 2, per_round: float = 1.0) -> RunState:
    config = RunConfig(
        clients=len(CLIENTS),
        rounds=10,
        privacy=PrivacyConfig(enabled=False),
        round=RoundConfig(timeout_s=100.0, clients_per_round=per_round, min_updates=1),
        strategy=StrategyConfig(name=FEDBUFF, options={"buffer_size": buffer, "max_staleness": staleness}),
    )
    run = state_from_created(RunCreated(run_id=RUN, config=config.to_dict()))
    commit(run, [ModelInitialized(run_id=RUN, model_version=0, model_digest="m0", num_parameters=10)])
    return run


def commit(run: RunState, events: list[Event], at: float = 1.0) -> list[Event]:
    for event in events:
        run.apply(event, at)
    return events


def header(client: str, *, round_: int, version: int) -> UploadHeader:
    return UploadHeader(
        run_id=RUN, round=round_, client_id=client, base_model_version=version, num_samples=10, codec="int8",
        total_size=100, raw_bytes=400, sha256=hashlib.sha256(f"{client}:{round_}".encode()).hexdigest(), epsilon=None,
    )  # fmt: skip


def upload(run: RunState, client: str, *, round_: int, version: int) -> list[Event]:
    upload_header = header(client, round_=round_, version=version)
    assert decide.header_refusal(run, client, upload_header) is None
    events = decide.accept(run, upload_header, update_id=f"u-{client}-{round_}", wire_bytes=100, pool=POOL, now=1.0)
    return commit(run, events)


def aggregate(run: RunState) -> list[Event]:
    current = run.current
    assert current is not None and current.closed
    version = current.model_version + 1
    done = RoundAggregated(
        run_id=RUN, round=current.round, model_version=version, model_digest=f"m{version}", num_updates=2,
        metrics={"accuracy": 0.5}, duration_s=0.1, attempt=current.attempt,
    )  # fmt: skip
    return commit(run, [done, *decide.then(run, [done], POOL, 1.0)[1:]])


def started(events: list[Event]) -> RoundStarted:
    return next(e for e in events if isinstance(e, RoundStarted))


def test_the_first_buffer_gives_work_to_every_client_and_closes_on_k_updates_not_on_everyone() -> None:
    run = buffered(buffer=2)
    first = started(commit(run, decide.due(run, POOL, 0.0)))
    assert first.selected == CLIENTS
    assert first.sampling == {"kind": SAMPLING_BUFFER, "buffer": 2, "in_flight": 6, "population": 6}
    assert not any(isinstance(e, QuorumReached) for e in upload(run, "c0", round_=1, version=0))
    closed = [e for e in upload(run, "c1", round_=1, version=0) if isinstance(e, QuorumReached)]
    assert len(closed) == 1 and closed[0].update_ids == ("u-c0-1", "u-c1-1") and closed[0].staleness == (0, 0)


def test_the_next_buffer_gives_work_only_to_idle_clients_and_takes_the_busy_ones_updates_with_their_staleness() -> None:
    run = buffered(buffer=2)
    commit(run, decide.due(run, POOL, 0.0))
    upload(run, "c0", round_=1, version=0)
    upload(run, "c1", round_=1, version=0)
    second = started(aggregate(run))
    assert second.round == 2 and second.model_version == 1
    assert second.selected == ("c0", "c1")  # c2..c5 are still training on version 0
    assert second.sampling["in_flight"] == 6
    upload(run, "c2", round_=1, version=0)  # work of round 1, into buffer 2
    closed = next(e for e in upload(run, "c0", round_=2, version=1) if isinstance(e, QuorumReached))
    assert closed.round == 2 and closed.update_ids == ("u-c2-1", "u-c0-2") and closed.staleness == (1, 0)


def test_an_update_accepted_while_a_buffer_is_aggregated_goes_into_the_next_buffer() -> None:
    run = buffered(buffer=2)
    commit(run, decide.due(run, POOL, 0.0))
    upload(run, "c0", round_=1, version=0)
    upload(run, "c1", round_=1, version=0)
    late = next(e for e in upload(run, "c2", round_=1, version=0) if isinstance(e, UpdateAccepted))
    assert late.late and late.round == 1 and late.model_version == 0
    second = started(aggregate(run))
    assert run.current is not None and set(run.current.accepted) == {"c2"}  # carried, not lost
    assert "c2" not in second.selected  # its update waits in this buffer: no second piece of work for it
    closed = next(e for e in upload(run, "c3", round_=1, version=0) if isinstance(e, QuorumReached))
    assert closed.update_ids == ("u-c2-1", "u-c3-1") and closed.staleness == (1, 1)


def test_work_more_than_max_staleness_behind_is_refused_and_its_client_gets_new_work() -> None:
    run = buffered(buffer=1, staleness=1)
    commit(run, decide.due(run, POOL, 0.0))
    upload(run, "c0", round_=1, version=0)
    aggregate(run)  # buffer 2 on version 1: c0 gets new work
    upload(run, "c0", round_=2, version=1)
    third = started(aggregate(run))  # buffer 3 on version 2: c1..c5's work on version 0 is 2 behind
    assert third.model_version == 2 and third.selected == CLIENTS
    stale = header("c1", round_=1, version=0)
    refusal = decide.header_refusal(run, "c1", stale)
    assert refusal is not None and refusal.reason is RejectReason.NOT_SELECTED  # its work is round 3's now


def test_an_update_on_a_model_it_was_not_given_or_for_work_never_given_is_refused() -> None:
    run = buffered(buffer=2, per_round=0.5)
    first = started(commit(run, decide.due(run, POOL, 0.0)))
    assert len(first.selected) == 3 and first.sampling["in_flight"] == 3
    given, idle = first.selected[0], next(c for c in CLIENTS if c not in first.selected)
    wrong = decide.header_refusal(run, given, header(given, round_=1, version=5))
    assert wrong is not None and wrong.reason is RejectReason.STALE_MODEL
    none = decide.header_refusal(run, idle, header(idle, round_=1, version=0))
    assert none is not None and none.reason is RejectReason.NOT_SELECTED


def test_a_refused_update_ends_the_work_and_a_failed_buffer_keeps_its_updates_for_the_retry() -> None:
    run = buffered(buffer=3)
    commit(run, decide.due(run, POOL, 0.0))
    upload(run, "c0", round_=1, version=0)
    rejected = UpdateRejected(run_id=RUN, round=1, client_id="c1", reason=RejectReason.NOT_FINITE.value)
    commit(run, [rejected])
    assert "c1" not in run.assigned and "c2" in run.assigned
    failed = RoundFailed(run_id=RUN, round=1, attempt=1, reason="deadline")
    retry = started(commit(run, [failed, *decide.then(run, [failed], POOL, 200.0)[1:]], at=200.0))
    assert retry.attempt == 2 and retry.selected == ("c1",)  # c0's update waits, c2..c5 still train
    assert run.current is not None and set(run.current.accepted) == {"c0"}


def test_a_buffer_does_not_close_because_its_own_cohort_answered() -> None:
    run = buffered(buffer=3)
    commit(run, decide.due(run, POOL, 0.0))
    for client in ("c0", "c1", "c2"):
        upload(run, client, round_=1, version=0)
    aggregate(run)  # buffer 2 selects c0..c2 again; c3..c5 still train
    upload(run, "c0", round_=2, version=1)
    upload(run, "c1", round_=2, version=1)
    assert run.current is not None and not run.current.closed
    assert decide.due(run, POOL, 50.0) == []  # 2 of 3: wait for the buffer, whoever fills it


def test_a_buffer_that_nobody_can_fill_any_more_closes_with_what_it_has_instead_of_waiting_for_its_deadline() -> None:
    # Clients decline (their budget spent, or they cannot train): once every client with work has answered or
    # declined, nothing more can come into the open buffer, since new work goes out only when one closes.
    run = buffered(buffer=4)
    commit(run, decide.due(run, POOL, 0.0))
    upload(run, "c0", round_=1, version=0)
    for client in CLIENTS[1:-1]:
        declined = ClientDeclined(run_id=RUN, round=1, client_id=client, reason="privacy_budget")
        commit(run, [declined, *decide.then(run, [declined], POOL, 1.0)[1:]])
    assert run.current is not None and not run.current.closed  # c5 still trains: it could fill the buffer
    declined = ClientDeclined(run_id=RUN, round=1, client_id="c5", reason="privacy_budget")
    closed = [e for e in decide.then(run, [declined], POOL, 1.0) if isinstance(e, QuorumReached)]
    assert len(closed) == 1 and closed[0].update_ids == ("u-c0-1",) and closed[0].partial


def test_a_buffer_nobody_can_fill_and_too_small_fails_and_the_retry_gives_the_idle_clients_work() -> None:
    run = buffered(buffer=2)
    commit(run, decide.due(run, POOL, 0.0))
    for client in CLIENTS:
        declined = ClientDeclined(run_id=RUN, round=1, client_id=client, reason="cannot train")
        events = commit(run, [declined, *decide.then(run, [declined], POOL, 1.0)[1:]])
    failed = next(e for e in events if isinstance(e, RoundFailed))
    assert failed.reason == "too few updates"  # at once, not at the deadline (t = 100)
    retry = started(commit(run, decide.due(run, POOL, 1.0)))
    assert retry.attempt == 2 and retry.selected == CLIENTS


def test_a_model_download_for_outstanding_work_is_served_until_the_work_is_too_stale() -> None:
    run = buffered(buffer=1, staleness=1)
    commit(run, decide.due(run, POOL, 0.0))
    upload(run, "c0", round_=1, version=0)
    assert decide.work_wanted(run, 1, 0)  # round 1 closed, but its work on version 0 still counts
    aggregate(run)
    assert decide.work_wanted(run, 1, 0) and decide.work_wanted(run, 2, 1)
    upload(run, "c0", round_=2, version=1)
    aggregate(run)
    assert not decide.work_wanted(run, 1, 0) and decide.work_wanted(run, 3, 2)
    assert not decide.work_wanted(run, 4, 2)  # no such round yet
