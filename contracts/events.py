"""The events of a federated run (DESIGN.md §3): past tense, frozen, registered explicitly."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Final

JsonDict = dict[str, Any]

# Reasons a client gives in ClientDeclined; the coordinator stops selecting a client out of budget.
DECLINE_PRIVACY_BUDGET: Final = "privacy_budget"
DECLINE_DATA_UNAVAILABLE: Final = "data_unavailable"
DECLINE_TASK_UNAVAILABLE: Final = "task_unavailable"
# The work reached the client after its deadline (a backlog, a restart): answered, so that a FedBuff client's
# assignment ends instead of counting as still in training until it goes stale.
DECLINE_TOO_LATE: Final = "too_late"


@dataclass(frozen=True, slots=True, kw_only=True)
class RunCreated:
    run_id: str
    config: JsonDict


@dataclass(frozen=True, slots=True, kw_only=True)
class ModelInitialized:
    run_id: str
    model_version: int
    model_digest: str
    num_parameters: int


@dataclass(frozen=True, slots=True, kw_only=True)
class ClientRegistered:
    client_id: str
    capabilities: JsonDict = field(default_factory=dict)
    secret_sha256: str = ""  # of the client secret that reclaims this identity ("" before it existed)


@dataclass(frozen=True, slots=True, kw_only=True)
class ClientEvicted:
    client_id: str
    reason: str


# How a round's cohort was drawn, RoundStarted.sampling["kind"]: a fixed-size sample (`round.clients_per_round`)
# or Poisson sampling (user-level DP: each of `population` eligible clients independently at `rate`).
SAMPLING_FIXED: Final = "fixed"
SAMPLING_POISSON: Final = "poisson"
# FedBuff: the round is a buffer; ``{"kind": "buffer", "buffer": K, "in_flight": n, "population": N}`` says how
# many updates close it and how many clients were training towards it when it opened.
SAMPLING_BUFFER: Final = "buffer"


@dataclass(frozen=True, slots=True, kw_only=True)
class RoundStarted:
    """A round's attempt opened for `selected`. `sampling` says how they were drawn, e.g.
    ``{"kind": "poisson", "rate": 0.1, "population": 240}``; events written before it decode with it empty.

    `plans` (capability-aware plans, ``[run.plans] adaptive``): client id -> what that client does instead of
    `train`'s local work and codec, and why, e.g. ``{"c1": {"max_steps": 12, "compression": "topk:0.1+int8",
    "why": "..."}}`` (contracts.capability.ClientPlan); a selected client with no entry trains `train` as is."""

    run_id: str
    round: int
    attempt: int
    model_version: int
    model_digest: str
    selected: tuple[str, ...]
    deadline: float
    train: JsonDict
    sampling: JsonDict = field(default_factory=dict)
    plans: JsonDict = field(default_factory=dict)


@dataclass(frozen=True, slots=True, kw_only=True)
class UpdateAccepted:
    """An update validated and stored for `round`. `model_version` is the version it was trained on: the round's
    own in a synchronous run, possibly an older one under FedBuff (-1: written before it was recorded). `codec`
    is the compression it was sent with ("": written before it was recorded)."""

    run_id: str
    round: int
    update_id: str
    client_id: str
    num_samples: int
    digest: str
    wire_bytes: int
    raw_bytes: int
    ratio: float
    epsilon: float | None
    metrics: JsonDict
    late: bool = False
    model_version: int = -1
    codec: str = ""


@dataclass(frozen=True, slots=True, kw_only=True)
class UpdateRejected:
    run_id: str
    round: int
    client_id: str
    reason: str
    detail: str = ""


@dataclass(frozen=True, slots=True, kw_only=True)
class ClientDeclined:
    run_id: str
    round: int
    client_id: str
    reason: str


@dataclass(frozen=True, slots=True, kw_only=True)
class QuorumReached:
    """The round closed with these updates. It carries what the aggregator needs (the base model and each
    update's digest and sample count, in the order of `update_ids`), so no aggregator re-reads the history.
    Events written before those fields existed decode with them empty."""

    run_id: str
    round: int
    model_version: int
    update_ids: tuple[str, ...]
    partial: bool
    attempt: int = 1
    base_model_digest: str = ""
    update_digests: tuple[str, ...] = ()
    sample_counts: tuple[int, ...] = ()
    train_loss: float = 0.0  # the updates' reported training loss, weighted by sample count
    server_state: str = ""  # digest of the strategy's state blob after the last aggregated round ("": none yet)
    sampling: JsonDict = field(default_factory=dict)  # the round's RoundStarted.sampling: user-level DP needs it
    staleness: tuple[int, ...] = ()  # per update: versions its base model lags `model_version` (FedBuff; () = 0s)


@dataclass(frozen=True, slots=True, kw_only=True)
class RoundAggregated:
    run_id: str
    round: int
    model_version: int
    model_digest: str
    num_updates: int
    metrics: JsonDict
    duration_s: float
    attempt: int = 0  # of the QuorumReached it aggregates (0: written before attempts were recorded here)
    server_state: str = ""  # digest of the strategy's state blob after this round ("": a stateless strategy)


@dataclass(frozen=True, slots=True, kw_only=True)
class RoundFailed:
    run_id: str
    round: int
    attempt: int
    reason: str


RUN_BUDGET: Final = "budget"  # RunCompleted.reason when privacy budgets end a run (the clients', or user-level)


@dataclass(frozen=True, slots=True, kw_only=True)
class RunCompleted:
    run_id: str
    reason: str
    rounds: int
    metrics: JsonDict


Event = (
    RunCreated
    | ModelInitialized
    | ClientRegistered
    | ClientEvicted
    | RoundStarted
    | UpdateAccepted
    | UpdateRejected
    | ClientDeclined
    | QuorumReached
    | RoundAggregated
    | RoundFailed
    | RunCompleted
)

# The explicit registry: wire type name -> (class, routing key). Nothing is imported by a name from the wire.
EVENT_TYPES: Final[dict[str, tuple[type[Event], str]]] = {
    "RunCreated": (RunCreated, "run.created"),
    "ModelInitialized": (ModelInitialized, "model.initialized"),
    "ClientRegistered": (ClientRegistered, "client.registered"),
    "ClientEvicted": (ClientEvicted, "client.evicted"),
    "RoundStarted": (RoundStarted, "round.started"),
    "UpdateAccepted": (UpdateAccepted, "update.accepted"),
    "UpdateRejected": (UpdateRejected, "update.rejected"),
    "ClientDeclined": (ClientDeclined, "client.declined"),
    "QuorumReached": (QuorumReached, "round.quorum_reached"),
    "RoundAggregated": (RoundAggregated, "round.aggregated"),
    "RoundFailed": (RoundFailed, "round.failed"),
    "RunCompleted": (RunCompleted, "run.completed"),
}
_NAME_OF: Final[dict[type[Any], str]] = {cls: name for name, (cls, _) in EVENT_TYPES.items()}


def type_name_of(event: Event) -> str:
    return _NAME_OF[type(event)]


def routing_key_of(event: Event) -> str:
    return EVENT_TYPES[type_name_of(event)][1]
