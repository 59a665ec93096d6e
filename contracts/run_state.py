"""A run's state, folded from its event stream: the one fold every reader of a run's history uses.

Every piece of round state is a fold of events, so a restarted coordinator rebuilds exactly what it had:
the grace period, for one, starts at the `occurred_at` of the update that met the quorum, not at the moment
some process noticed it.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass, field, replace

from contracts.capability import Capability, measured
from contracts.config import RunConfig
from contracts.envelope import RecordedEvent
from contracts.evaluation import EVAL_SAMPLES, FederatedEvaluation, federated_evaluation
from contracts.events import (
    DECLINE_PRIVACY_BUDGET,
    ClientDeclined,
    Event,
    JsonDict,
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
from contracts.update_validation import DAMAGED_IN_TRANSIT
from contracts.user_privacy import (
    USER_CLIP_NORM,
    USER_EPSILON,
    USER_EPSILON_AMPLIFIED,
    USER_EPSILON_NEXT,
    USER_EPSILON_REASON,
)


def quorum_size(selected: int, quorum: float, min_updates: int) -> int:
    """Accepted updates that close a round of `selected` clients: the quorum fraction, at least min_updates."""
    return min(selected, max(min_updates, math.ceil(quorum * selected)))


def needed_updates(round_: RoundState, config: RunConfig) -> int:
    """Accepted updates that close `round_`: FedBuff's buffer as RoundStarted fixed it, else the quorum."""
    if config.strategy.asynchronous:
        return max(1, int(round_.sampling.get("buffer", 1)))
    return quorum_size(len(round_.selected), config.round.quorum, config.round.min_updates)


@dataclass(frozen=True, slots=True, kw_only=True)
class AcceptedUpdate:
    """What an aggregator needs of one accepted update, carried to it in QuorumReached."""

    update_id: str
    digest: str
    num_samples: int
    loss: float
    model_version: int = -1  # the version it was trained on


@dataclass(frozen=True, slots=True, kw_only=True)
class RoundSummary:
    """One aggregated round as reports show it (the CLI's progress, metrics.csv, summary.json)."""

    round: int
    accuracy: float
    loss: float
    train_loss: float
    epsilon: float | None  # the most any client had spent by this round
    updates: int
    bytes_sent: int  # wire bytes of the round's on-time updates
    raw_bytes: int
    compression_ratio: float
    duration_s: float  # from the round's first start to its aggregation
    elapsed_s: float  # from the run's creation
    aggregate_s: float
    federated: FederatedEvaluation | None = None  # the round's cohort on the model it started from
    central: bool = True  # the aggregator evaluated the new model (accuracy and loss are 0.0 when not)
    user_epsilon: float | None = None  # user-level DP: what the released models have spent (None: off)
    user_epsilon_amplified: bool | None = None  # ... whether that counts the sampling's amplification
    user_epsilon_reason: str | None = None  # ... and why it does or does not
    user_clip_norm: float | None = None  # ... and the clip norm this round used

    @property
    def federated_accuracy(self) -> float | None:
        return self.federated.metrics.get("accuracy") if self.federated else None


@dataclass(slots=True)
class RoundState:
    round: int
    attempt: int
    model_version: int
    model_digest: str
    selected: tuple[str, ...]
    deadline: float
    started_at: float
    sampling: JsonDict = field(default_factory=dict)  # how `selected` was drawn (RoundStarted.sampling)
    accepted: dict[str, AcceptedUpdate] = field(default_factory=dict)  # client_id -> on-time update
    late: dict[str, AcceptedUpdate] = field(default_factory=dict)
    rejected: set[str] = field(default_factory=set)
    declined: set[str] = field(default_factory=set)
    wire_bytes: int = 0  # of the on-time updates
    raw_bytes: int = 0
    evaluations: list[dict[str, float]] = field(default_factory=list)  # accepted updates' eval_* metrics
    traceparent: str | None = None  # the round's trace: every event of the round joins it
    quorum_at: float | None = None  # occurred_at of the update that met the quorum (the grace period starts)
    closed_at: float | None = None  # occurred_at of QuorumReached (the aggregation deadline runs from it)
    closed: bool = False  # QuorumReached or RoundFailed appended
    failed: bool = False
    aggregated: bool = False

    @property
    def responded(self) -> int:
        """Selected clients that answered; a client refused and then accepted, or not selected, counts once or not."""
        answered = set(self.accepted) | self.rejected | self.declined
        return len(answered.intersection(self.selected))

    def has_sent(self, client_id: str) -> bool:
        return client_id in self.accepted or client_id in self.late

    def fork(self) -> RoundState:
        """A copy to fold events into without changing this one (see RunState.fork); `sampling` is shared: the
        fold never changes it."""
        return replace(
            self,
            accepted=dict(self.accepted),
            late=dict(self.late),
            rejected=set(self.rejected),
            declined=set(self.declined),
            evaluations=list(self.evaluations),
        )


@dataclass(slots=True)
class RunState:
    run_id: str
    config: RunConfig
    version: int = 0  # the stream version this state reflects
    models: dict[int, str] = field(default_factory=dict)  # model version -> digest
    current: RoundState | None = None
    accuracies: list[float] = field(default_factory=list)
    exhausted: set[str] = field(default_factory=set)  # clients out of privacy budget
    completed: str | None = None  # the reason, once RunCompleted
    created_at: float | None = None
    first_started: dict[int, float] = field(default_factory=dict)  # round -> when its first attempt started
    epsilon: float | None = None  # the most any accepted update declared
    server_state: str = ""  # the strategy state the latest aggregated round left (a blob digest)
    user_epsilon_next: float | None = None  # user-level DP: the epsilon one more round would bring (aggregator's)
    summaries: list[RoundSummary] = field(default_factory=list)
    # FedBuff: client -> (round, model version) of the work it was given and has not answered yet
    assigned: dict[str, tuple[int, int]] = field(default_factory=dict)
    # Capability-aware plans: what each client's rounds cost, from its accepted updates' measurements
    capabilities: dict[str, Capability] = field(default_factory=dict)

    @property
    def latest_model(self) -> tuple[int, str] | None:
        if not self.models:
            return None
        version = max(self.models)
        return version, self.models[version]

    def carried(self, model_version: int) -> dict[str, AcceptedUpdate]:
        """FedBuff: the accepted updates no aggregation took that the next buffer, based on `model_version`, starts
        with (a closed buffer's late ones; all of a failed attempt's), less those more than max_staleness behind."""
        current = self.current
        if current is None or not self.config.strategy.asynchronous or not (current.aggregated or current.failed):
            return {}
        waiting = current.late if current.aggregated else {**current.accepted, **current.late}
        limit = self.config.strategy.max_staleness
        return {c: u for c, u in waiting.items() if model_version - u.model_version <= limit}

    def in_flight(self, model_version: int) -> set[str]:
        """FedBuff: clients still training on work not more than max_staleness versions behind `model_version`."""
        limit = self.config.strategy.max_staleness
        return {c for c, (_, version) in self.assigned.items() if model_version - version <= limit}

    def fork(self) -> RunState:
        """A copy to fold events into without changing this one: what a decision would leave (decide.then).

        The containers the fold changes in place are copied; what it only reads or replaces is shared (the
        frozen config, the frozen records inside the containers). A deep copy cost the coordinator ~7% of its
        CPU at 200 clients, on every accepted update, and grew with the run's history."""
        return replace(
            self,
            models=dict(self.models),
            current=self.current.fork() if self.current is not None else None,
            accuracies=list(self.accuracies),
            exhausted=set(self.exhausted),
            first_started=dict(self.first_started),
            summaries=list(self.summaries),
            assigned=dict(self.assigned),
            capabilities=dict(self.capabilities),
        )

    def apply_recorded(self, recorded: RecordedEvent) -> None:
        """Fold one event as the log recorded it, and move to its version (an event already folded is skipped,
        so two refreshes that read the same batch concurrently fold it once)."""
        envelope = recorded.envelope
        self.apply_at(recorded.version, envelope.event, envelope.occurred_at, envelope.traceparent)

    def apply_at(self, version: int, event: Event, occurred_at: float, traceparent: str | None = None) -> bool:
        """Fold the event at `version` of the stream unless it is folded already; whether it was folded now."""
        if version <= self.version:
            return False
        self.apply(event, occurred_at, traceparent)
        self.version = version
        return True

    def apply(self, event: Event, occurred_at: float, traceparent: str | None = None) -> None:
        """Fold one event into the state; events that do not change a run's state are ignored."""
        self._release(event)
        if isinstance(event, UpdateAccepted):
            self._measure(event)
        match event:
            case RunCreated():
                self.created_at = occurred_at
            case ModelInitialized(model_version=v, model_digest=d):
                self.models[v] = d
            case RoundAggregated() if self._is_stale(event.round, event.attempt):
                pass  # a slow aggregation of an attempt that already failed: its model is not the run's
            case RoundAggregated(model_version=v, model_digest=d):
                self.models[v] = d
                self.server_state = event.server_state
                self.user_epsilon_next = _number_or_none(event.metrics.get(USER_EPSILON_NEXT))
                self.accuracies.append(float(event.metrics.get("accuracy", 0.0)))
                if self.current is not None and self.current.round == event.round:
                    self.current.aggregated = True
                self.summaries.append(self._summary(event, occurred_at))
            case RoundStarted():
                self.first_started.setdefault(event.round, occurred_at)
                carried = self.carried(event.model_version)
                self.current = RoundState(
                    round=event.round,
                    attempt=event.attempt,
                    model_version=event.model_version,
                    model_digest=event.model_digest,
                    selected=event.selected,
                    deadline=event.deadline,
                    started_at=occurred_at,
                    sampling=dict(event.sampling),
                    traceparent=traceparent,
                    accepted=carried,
                )
                if self.config.strategy.asynchronous:
                    self.assigned.update({client: (event.round, event.model_version) for client in event.selected})
                    if len(carried) >= needed_updates(self.current, self.config):
                        self.current.quorum_at = occurred_at
            case UpdateAccepted() if self._is_current(event.round):
                self._accept(event, occurred_at)
            case UpdateRejected() if self._is_current(event.round) and event.reason not in DAMAGED_IN_TRANSIT:
                assert self.current is not None
                self.current.rejected.add(event.client_id)
            case ClientDeclined():
                if event.reason == DECLINE_PRIVACY_BUDGET:
                    self.exhausted.add(event.client_id)
                if self._is_current(event.round):
                    assert self.current is not None
                    self.current.declined.add(event.client_id)
            case QuorumReached() if self._is_current(event.round):
                assert self.current is not None
                self.current.closed, self.current.closed_at = True, occurred_at
            case RoundFailed() if self._is_current(event.round) and not self._is_stale(event.round, event.attempt):
                assert self.current is not None
                self.current.closed = self.current.failed = True
            case RunCompleted():
                self.completed = event.reason
            case _:
                pass

    def _release(self, event: Event) -> None:
        """FedBuff: a client's answer to its work (an update, a refusal that is not damage in transit, a decline)
        ends its assignment; the next buffer may give it more."""
        match event:
            case UpdateAccepted():
                self.assigned.pop(event.client_id, None)
            case UpdateRejected() | ClientDeclined() if self.assigned.get(event.client_id, (0, 0))[0] == event.round:
                if not isinstance(event, UpdateRejected) or event.reason not in DAMAGED_IN_TRANSIT:
                    del self.assigned[event.client_id]
            case _:
                pass

    def _measure(self, event: UpdateAccepted) -> None:
        """Whatever round it answers, on time or late: a straggler's late update measures it best."""
        capability = measured(
            self.capabilities.get(event.client_id),
            event.metrics,
            num_samples=event.num_samples,
            raw_bytes=event.raw_bytes,
            codec=event.codec,
            wire_bytes=event.wire_bytes,
        )
        if capability is not None:
            self.capabilities[event.client_id] = capability

    def _accept(self, event: UpdateAccepted, occurred_at: float) -> None:
        current = self.current
        assert current is not None
        update = AcceptedUpdate(
            update_id=event.update_id,
            digest=event.digest,
            num_samples=event.num_samples,
            loss=float(event.metrics.get("loss", 0.0)),
            model_version=event.model_version if event.model_version >= 0 else current.model_version,
        )
        (current.late if event.late else current.accepted)[event.client_id] = update
        if EVAL_SAMPLES in event.metrics:
            current.evaluations.append(dict(event.metrics))
        if event.epsilon is not None:
            self.epsilon = max(self.epsilon or 0.0, event.epsilon)
        if not event.late:
            current.wire_bytes += event.wire_bytes
            current.raw_bytes += event.raw_bytes
        needed = needed_updates(current, self.config)
        if current.quorum_at is None and not event.late and len(current.accepted) >= needed:
            current.quorum_at = occurred_at

    def _summary(self, event: RoundAggregated, occurred_at: float) -> RoundSummary:
        current = self.current if self._is_current(event.round) else None
        wire, raw = (current.wire_bytes, current.raw_bytes) if current else (0, 0)
        return RoundSummary(
            round=event.round,
            accuracy=float(event.metrics.get("accuracy", 0.0)),
            loss=float(event.metrics.get("loss", 0.0)),
            train_loss=float(event.metrics.get("train_loss", 0.0)),
            epsilon=self.epsilon,
            updates=event.num_updates,
            bytes_sent=wire,
            raw_bytes=raw,
            compression_ratio=raw / wire if wire else 1.0,
            duration_s=occurred_at - self.first_started.get(event.round, occurred_at),
            elapsed_s=occurred_at - (self.created_at if self.created_at is not None else occurred_at),
            aggregate_s=event.duration_s,
            federated=federated_evaluation(current.model_version, current.evaluations) if current else None,
            central="accuracy" in event.metrics or "loss" in event.metrics,
            user_epsilon=_number_or_none(event.metrics.get(USER_EPSILON)),
            user_epsilon_amplified=amplified
            if isinstance(amplified := event.metrics.get(USER_EPSILON_AMPLIFIED), bool)
            else None,
            user_epsilon_reason=reason if isinstance(reason := event.metrics.get(USER_EPSILON_REASON), str) else None,
            user_clip_norm=_number_or_none(event.metrics.get(USER_CLIP_NORM)),
        )

    def _is_current(self, round_: int) -> bool:
        return self.current is not None and self.current.round == round_

    def _is_stale(self, round_: int, attempt: int) -> bool:
        """An outcome for an attempt of the current round other than the open one, or for one already failed."""
        current = self.current
        if current is None or current.round != round_ or attempt == 0:
            return False  # attempt 0: recorded before outcomes named their attempt
        return attempt != current.attempt or current.failed


def _number_or_none(value: object) -> float | None:
    """A metric as a float; None when absent or not a number (a metric is whatever an aggregator wrote)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value)


def state_from_created(event: RunCreated, occurred_at: float | None = None) -> RunState:
    return RunState(run_id=event.run_id, config=RunConfig.from_dict(event.config), created_at=occurred_at)


def fold_run(events: Iterable[RecordedEvent]) -> RunState:
    """A run's state from its whole stream (the first event is its RunCreated)."""
    run: RunState | None = None
    for recorded in events:
        event = recorded.envelope.event
        if run is None:
            if not isinstance(event, RunCreated):
                raise ValueError(f"a run's stream starts with RunCreated, not {type(event).__name__}")
            run = state_from_created(event, recorded.envelope.occurred_at)
        run.apply_recorded(recorded)
    if run is None:
        raise ValueError("no events: a run's stream starts with RunCreated")
    return run
