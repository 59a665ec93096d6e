"""The coordinator's view of a run, folded from the run's event stream (so a restart rebuilds it)."""

from __future__ import annotations

from dataclasses import dataclass, field

from contracts.config import RunConfig
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


@dataclass(slots=True)
class RoundState:
    round: int
    attempt: int
    model_version: int
    model_digest: str
    selected: tuple[str, ...]
    deadline: float
    started_at: float
    accepted: dict[str, str] = field(default_factory=dict)  # client_id -> update_id (on time)
    late: dict[str, str] = field(default_factory=dict)
    rejected: set[str] = field(default_factory=set)
    declined: set[str] = field(default_factory=set)
    traceparent: str | None = None  # the round's trace: every event of the round joins it
    quorum_at: float | None = None  # when the quorum was first met (grace period starts)
    closed: bool = False  # QuorumReached or RoundFailed appended
    failed: bool = False
    aggregated: bool = False

    @property
    def responded(self) -> int:
        """Selected clients that answered; a client refused and then accepted, or not selected, counts once or not."""
        answered = set(self.accepted) | self.rejected | self.declined
        return len(answered.intersection(self.selected))


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

    @property
    def latest_model(self) -> tuple[int, str] | None:
        if not self.models:
            return None
        version = max(self.models)
        return version, self.models[version]

    def apply(self, event: Event, occurred_at: float, traceparent: str | None = None) -> None:
        """Fold one event into the state; unknown-to-the-coordinator events are ignored."""
        match event:
            case ModelInitialized(model_version=v, model_digest=d) | RoundAggregated(model_version=v, model_digest=d):
                self.models[v] = d
                if isinstance(event, RoundAggregated):
                    self.accuracies.append(float(event.metrics.get("accuracy", 0.0)))
                    if self.current is not None and self.current.round == event.round:
                        self.current.aggregated = True
            case RoundStarted():
                self.current = RoundState(
                    round=event.round,
                    attempt=event.attempt,
                    model_version=event.model_version,
                    model_digest=event.model_digest,
                    selected=event.selected,
                    deadline=event.deadline,
                    started_at=occurred_at,
                    traceparent=traceparent,
                )
            case UpdateAccepted() if self._is_current(event.round):
                assert self.current is not None
                target = self.current.late if event.late else self.current.accepted
                target[event.client_id] = event.update_id
            case UpdateRejected() if self._is_current(event.round):
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
                self.current.closed = True
            case RoundFailed() if self._is_current(event.round):
                assert self.current is not None
                self.current.closed = self.current.failed = True
            case RunCompleted():
                self.completed = event.reason
            case _:
                pass

    def _is_current(self, round_: int) -> bool:
        return self.current is not None and self.current.round == round_


def state_from_created(event: RunCreated) -> RunState:
    return RunState(run_id=event.run_id, config=RunConfig.from_dict(event.config))
