"""The round's decisions as pure functions: (run state folded from events, client pool, now) -> events.

No I/O, no clock reads, no mutation of the state passed in. The commit loop (commit.py) refreshes the
state, calls one of these and appends what it returns at the state's version; on a conflict it refreshes
and calls it again. Every branch of a round (DESIGN.md §7) is here: start, accept, quorum, grace,
deadline, failure and retry, convergence, stop.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from contracts.config import RunConfig
from contracts.events import (
    SAMPLING_BUFFER,
    SAMPLING_FIXED,
    SAMPLING_POISSON,
    ClientDeclined,
    Event,
    JsonDict,
    QuorumReached,
    RoundFailed,
    RoundStarted,
    RunCompleted,
    UpdateAccepted,
    UpdateRejected,
)
from contracts.run_state import RunState
from contracts.train_plan import plan_for, plan_privacy
from contracts.update_validation import RejectReason
from contracts.uploads import UploadHeader
from services.coordinator.errors import NoRoundOpen, UploadRefused
from services.coordinator.plans import plan_clients
from services.coordinator.rules import (
    RoundDecision,
    StopReason,
    close_decision,
    convergence,
    poisson_sample,
    select_clients,
    select_count,
    user_budget_reached,
)


@dataclass(frozen=True, slots=True, kw_only=True)
class ClientPool:
    """The clients a decision may select from: registered and not evicted."""

    active: frozenset[str]


def due(run: RunState, pool: ClientPool, now: float) -> list[Event]:
    """Whatever is due now: the first round, closing the open one, a retry, the next round or the end."""
    current = run.current
    if run.completed:
        return []
    if current is None:
        return _start_round(run, pool, now, round_=1, attempt=1) if run.latest_model else []
    if current.aggregated:
        reason = convergence(run.accuracies, run.config)
        return [_completed(run, reason)] if reason else _start_round(run, pool, now, current.round + 1, 1)
    if current.failed:
        if current.attempt < run.config.round.max_attempts:
            return _start_round(run, pool, now, current.round, current.attempt + 1)
        return [_completed(run, StopReason.FAILED)]
    if current.closed:
        return _aggregation_overdue(run, now)
    nobody_training = run.config.strategy.asynchronous and not run.in_flight(current.model_version)
    decision = close_decision(current, run.config, now, nobody_training=nobody_training)
    if decision is RoundDecision.QUORUM:
        accepted = list(current.accepted.values())
        samples = sum(u.num_samples for u in accepted)
        return [
            QuorumReached(
                run_id=run.run_id,
                round=current.round,
                model_version=current.model_version,
                update_ids=tuple(u.update_id for u in accepted),
                partial=len(accepted) < len(current.selected),
                attempt=current.attempt,
                base_model_digest=current.model_digest,
                update_digests=tuple(u.digest for u in accepted),
                sample_counts=tuple(u.num_samples for u in accepted),
                train_loss=sum(u.loss * u.num_samples for u in accepted) / max(1, samples),
                server_state=run.server_state,
                sampling=current.sampling,
                staleness=tuple(current.model_version - u.model_version for u in accepted),
            )
        ]
    if decision is RoundDecision.FAIL:
        why = "deadline" if now >= current.deadline else "too few updates"
        return [RoundFailed(run_id=run.run_id, round=current.round, attempt=current.attempt, reason=why)]
    return []


AGGREGATION_TIMEOUT = "aggregation_timeout"


def _aggregation_overdue(run: RunState, now: float) -> list[Event]:
    """RoundFailed for a closed round that no aggregator finished in time (a crash, a dead-lettered quorum):
    the retry starts a new attempt instead of leaving the run waiting for ever."""
    current = run.current
    assert current is not None and current.closed_at is not None
    limit = run.config.round.aggregation_timeout_s
    if now < current.closed_at + limit:
        return []
    return [RoundFailed(run_id=run.run_id, round=current.round, attempt=current.attempt, reason=AGGREGATION_TIMEOUT)]


def then(run: RunState, events: Sequence[Event], pool: ClientPool, now: float) -> list[Event]:
    """`events` followed by what becomes due once they are folded in (appended together, in one commit)."""
    preview = run.fork()
    for event in events:
        preview.apply(event, now)
    return [*events, *due(preview, pool, now)]


def header_refusal(run: RunState, client_id: str, header: UploadHeader) -> UploadRefused | None:
    """What the header alone says against an upload, before any of its bytes are read."""
    refusal = _round_refusal(run, client_id, header)
    if refusal is not None:
        return refusal
    limit = run.config.round.max_update_bytes
    if header.total_size > limit:
        return UploadRefused(RejectReason.TOO_LARGE, f"{header.total_size} bytes > limit {limit}")
    return _privacy_refusal(run, header)


def work_wanted(run: RunState, round_: int, model_version: int) -> bool:
    """Whether training for `round_` on `model_version` is still wanted: the round is open (synchronous), or under
    FedBuff the run goes on and that version is within max_staleness of the latest."""
    current, latest = run.current, run.latest_model
    if run.completed or current is None or latest is None:
        return False
    if run.config.strategy.asynchronous:
        return round_ <= current.round and latest[0] - model_version <= run.config.strategy.max_staleness
    return current.round == round_ and not current.closed


def _round_refusal(run: RunState, client_id: str, header: UploadHeader) -> UploadRefused | None:
    """Whether the update answers work this client was given that is still wanted."""
    current = run.current
    asynchronous = run.config.strategy.asynchronous
    if current is None or current.aggregated or run.completed or (current.round != header.round and not asynchronous):
        return UploadRefused(RejectReason.ROUND_CLOSED, f"round {header.round} is not open")
    if current.has_sent(client_id):
        return UploadRefused(RejectReason.DUPLICATE, f"{client_id} already sent an update for round {header.round}")
    if asynchronous:
        return _buffer_refusal(run, client_id, header)
    if client_id not in current.selected:
        return UploadRefused(RejectReason.NOT_SELECTED, f"{client_id} was not selected")
    if header.base_model_version != current.model_version:
        detail = f"trained on version {header.base_model_version}, round uses {current.model_version}"
        return UploadRefused(RejectReason.STALE_MODEL, detail)
    return None


def _buffer_refusal(run: RunState, client_id: str, header: UploadHeader) -> UploadRefused | None:
    """FedBuff: an update for the client's outstanding work, on the model it was given, not too stale."""
    current = run.current
    assert current is not None
    work = run.assigned.get(client_id)
    if work is None or work[0] != header.round:
        return UploadRefused(RejectReason.NOT_SELECTED, f"{client_id} has no work of round {header.round} open")
    trained_on, limit = work[1], run.config.strategy.max_staleness
    if header.base_model_version != trained_on:
        detail = f"trained on version {header.base_model_version}, it was given {trained_on}"
        return UploadRefused(RejectReason.STALE_MODEL, detail)
    if current.model_version - trained_on > limit:
        detail = f"trained on version {trained_on}, the buffer's base is {current.model_version}: over {limit} behind"
        return UploadRefused(RejectReason.STALE_MODEL, detail)
    return None


def _privacy_refusal(run: RunState, header: UploadHeader) -> UploadRefused | None:
    """With DP on, an update must declare the epsilon its client has spent, and it must be within budget."""
    privacy = plan_privacy(run.config)
    if not privacy.enabled:
        return None
    if header.epsilon is None:
        return UploadRefused(RejectReason.EPSILON_MISSING, "the run is differentially private: declare epsilon")
    if privacy.exceeded_by(header.epsilon):
        detail = f"declared epsilon {header.epsilon:.6g} is past the run's budget {privacy.epsilon:g}"
        return UploadRefused(RejectReason.BUDGET_EXCEEDED, detail)
    return None


def accept(
    run: RunState, header: UploadHeader, *, update_id: str, wire_bytes: int, pool: ClientPool, now: float
) -> list[Event]:
    """UpdateAccepted for a validated, stored update (late once the round closed), then what is due.

    Raises UploadRefused when the round closed for good or the client's update is already in.
    """
    current = run.current
    refusal = _round_refusal(run, header.client_id, header)
    if current is None or refusal is not None:
        raise refusal or UploadRefused(RejectReason.ROUND_CLOSED, f"round {header.round} closed while uploading")
    event = UpdateAccepted(
        run_id=header.run_id,
        round=current.round,  # FedBuff: the open buffer, whichever round's work the update answers
        update_id=update_id,
        client_id=header.client_id,
        num_samples=header.num_samples,
        digest=header.sha256,
        wire_bytes=wire_bytes,
        raw_bytes=header.raw_bytes,
        ratio=header.raw_bytes / wire_bytes if header.raw_bytes else 1.0,
        epsilon=header.epsilon,
        metrics=dict(header.metrics),
        late=current.closed,
        model_version=header.base_model_version,
        codec=header.codec,
    )
    return then(run, [event], pool, now)


def reject(run: RunState, header: UploadHeader, refusal: UploadRefused, pool: ClientPool, now: float) -> list[Event]:
    """UpdateRejected with the refusal's reason code, then what is due (everyone may have answered now)."""
    event = UpdateRejected(
        run_id=header.run_id,
        round=header.round,
        client_id=header.client_id,
        reason=refusal.reason.value,
        detail=refusal.detail[:500],
    )
    return then(run, [event], pool, now)


def decline(run: RunState, client_id: str, round_: int, reason: str, pool: ClientPool, now: float) -> list[Event]:
    """ClientDeclined for a selected client of the open round; NoRoundOpen otherwise."""
    current = run.current
    given = run.assigned.get(client_id, (0, 0))[0] == round_ if run.config.strategy.asynchronous else False
    if current is None or (not given and (current.round != round_ or client_id not in current.selected)):
        raise NoRoundOpen(f"{client_id} is not selected in an open round {round_} of {run.run_id}")
    event = ClientDeclined(run_id=run.run_id, round=round_, client_id=client_id, reason=reason[:200])
    return then(run, [event], pool, now)


RESUMED = "resumed"


def resume(run: RunState, pool: ClientPool, now: float, since: float) -> list[Event]:
    """A run taken up again by new processes (`fedbus run --resume`), whose broker went with the old ones: its
    open round's RoundStarted (or QuorumReached) will reach nobody, so that attempt fails as `resumed` and the
    next attempt starts now, whatever `max_attempts` says (the old processes' end is no failure of the round).

    `since` is when the new processes took over. An attempt started at or after it is theirs (the old ones were
    killed between rounds, and the new coordinator started the next before it was told to resume): its
    RoundStarted reached the new clients, so it stays open. Failing it would hand them the round twice."""
    current = run.current
    if run.completed or current is None or current.aggregated or current.failed or current.started_at >= since:
        return due(run, pool, now)
    failed = RoundFailed(run_id=run.run_id, round=current.round, attempt=current.attempt, reason=RESUMED)
    preview = run.fork()
    preview.apply(failed, now)
    return [failed, *_start_round(preview, pool, now, current.round, current.attempt + 1)]


def stop(run: RunState) -> list[Event]:
    """RunCompleted(stopped), unless the run already ended."""
    return [] if run.completed else [_completed(run, StopReason.STOPPED)]


def _start_round(run: RunState, pool: ClientPool, now: float, round_: int, attempt: int) -> list[Event]:
    latest = run.latest_model
    assert latest is not None
    version, digest = latest
    eligible = sorted(pool.active - run.exhausted)
    if not eligible:
        # Everyone left has spent their budget: the run is over. No client at all: wait for one.
        return [_completed(run, StopReason.BUDGET)] if pool.active else []
    config = run.config
    if user_budget_reached(run.user_epsilon_next, config):
        return [_completed(run, StopReason.BUDGET)]
    if config.strategy.asynchronous:
        selected, sampling = _buffer_cohort(run, eligible, version, round_, attempt)
    else:
        selected, sampling = _cohort(config, eligible, round_, attempt)
    plan = plan_for(config)
    plans = plan_clients(config, selected, run.capabilities) if config.plans.adaptive else {}
    started = RoundStarted(
        run_id=run.run_id,
        round=round_,
        attempt=attempt,
        model_version=version,
        model_digest=digest,
        selected=selected,
        deadline=now + config.round.timeout_s,
        train=plan.to_dict(),
        sampling=sampling,
        plans={client: client_plan.to_dict() for client, client_plan in plans.items()},
    )
    # An empty Poisson sample is a round like any other for the accountant: it closes at once, and the
    # aggregator's step is noise only. Drawing again instead would condition the sample on being non-empty,
    # which is no Poisson sample any more, and the amplification would not hold.
    return then(run, [started], pool, now) if not selected or config.strategy.asynchronous else [started]


def _cohort(config: RunConfig, eligible: list[str], round_: int, attempt: int) -> tuple[tuple[str, ...], JsonDict]:
    """Who is selected, and how they were drawn (RoundStarted.sampling)."""
    seed = config.seed
    if config.user_privacy.enabled:
        rate = config.user_privacy.sample_rate
        selected = poisson_sample(eligible, rate, seed=seed, round_=round_, attempt=attempt)
        return selected, {"kind": SAMPLING_POISSON, "rate": rate, "population": len(eligible)}
    fraction = config.round.clients_per_round
    selected = select_clients(eligible, fraction, seed=seed, round_=round_, attempt=attempt)
    return selected, {"kind": SAMPLING_FIXED, "fraction": fraction, "population": len(eligible)}


def _buffer_cohort(
    run: RunState, eligible: list[str], version: int, round_: int, attempt: int
) -> tuple[tuple[str, ...], JsonDict]:
    """FedBuff: new work for idle clients, up to ceil(clients_per_round * eligible) training at once (counting
    those still on earlier work and those whose update waits in the buffer), and the buffer's size."""
    config = run.config
    busy = (run.in_flight(version) | set(run.carried(version))).intersection(eligible)
    target = max(1, math.ceil(config.round.clients_per_round * len(eligible)))
    idle = [client for client in eligible if client not in busy]
    selected = select_count(idle, max(0, target - len(busy)), seed=config.seed, round_=round_, attempt=attempt)
    in_flight = len(busy) + len(selected)
    buffer = max(1, min(config.strategy.buffer_size, in_flight))
    sampling = {"kind": SAMPLING_BUFFER, "buffer": buffer, "in_flight": in_flight, "population": len(eligible)}
    return selected, sampling


def _completed(run: RunState, reason: StopReason) -> RunCompleted:
    metrics = {"accuracy": run.accuracies[-1]} if run.accuracies else {}
    return RunCompleted(run_id=run.run_id, reason=reason.value, rounds=len(run.accuracies), metrics=metrics)
