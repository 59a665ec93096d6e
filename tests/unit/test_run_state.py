"""RunState.fork: a copy the decider folds what-if events into, cheaper than a deep copy and as independent."""

from __future__ import annotations

import copy
import dataclasses

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
from contracts.run_state import RoundState, RunState, state_from_created
from contracts.strategy import FEDBUFF, StrategyConfig
from contracts.update_validation import RejectReason

RUN = "r1"
CLIENTS = ("c0", "c1", "c2", "c3")


def config(*, asynchronous: bool = False) -> RunConfig:
    strategy = StrategyConfig(name=FEDBUFF, options={"buffer_size": 2}) if asynchronous else StrategyConfig()
    return RunConfig(
        clients=4, rounds=3, privacy=PrivacyConfig(enabled=False), round=RoundConfig(timeout_s=100.0),
        strategy=strategy,
    )  # fmt: skip


def started(round_: int, version: int, at: float) -> RoundStarted:
    return RoundStarted(
        run_id=RUN, round=round_, attempt=1, model_version=version, model_digest=f"m{version}", selected=CLIENTS,
        deadline=at + 100.0, train={}, sampling={"kind": "all"},
    )  # fmt: skip


def accepted(client: str, round_: int, *, late: bool = False, version: int = 0) -> UpdateAccepted:
    return UpdateAccepted(
        run_id=RUN, round=round_, update_id=f"u-{client}-{round_}", client_id=client, num_samples=10,
        digest=f"d-{client}-{round_}", wire_bytes=100, raw_bytes=400, ratio=4.0, epsilon=1.0, late=late,
        metrics={"loss": 1.0, "eval_samples": 5, "eval_accuracy": 0.5, "train_s": 0.2}, model_version=version,
        codec="int8",
    )  # fmt: skip


def aggregated(round_: int) -> RoundAggregated:
    return RoundAggregated(
        run_id=RUN, round=round_, attempt=1, model_version=round_, model_digest=f"m{round_}", num_updates=2,
        metrics={"accuracy": 0.9}, duration_s=1.0, server_state=f"s{round_}",
    )  # fmt: skip


def history(asynchronous: bool) -> RunState:
    """A run one round in, with something in every container the fold keeps."""
    run = state_from_created(RunCreated(run_id=RUN, config=config(asynchronous=asynchronous).to_dict()))
    events: list[Event] = [
        RunCreated(run_id=RUN, config=config(asynchronous=asynchronous).to_dict()),
        ModelInitialized(run_id=RUN, model_version=0, model_digest="m0", num_parameters=10),
        started(1, 0, 1.0),
        accepted("c0", 1),
        accepted("c1", 1),
        QuorumReached(run_id=RUN, round=1, attempt=1, model_version=0, update_ids=("u-c0-1", "u-c1-1"), partial=True,
                      base_model_digest="m0", update_digests=("d-c0-1", "d-c1-1"), sample_counts=(10, 10)),
        accepted("c2", 1, late=True),
        aggregated(1),
        started(2, 1, 3.0),
        accepted("c3", 2, version=1),
    ]  # fmt: skip
    for at, event in enumerate(events):
        run.apply(event, float(at))
    return run


def what_if() -> list[Event]:
    """Events touching every part of the state: answers of each kind, an outcome, the next round, the end."""
    return [
        accepted("c0", 2, version=1),
        UpdateRejected(run_id=RUN, round=2, client_id="c1", reason=RejectReason.NOT_FINITE.value, detail="nan"),
        ClientDeclined(run_id=RUN, round=2, client_id="c2", reason=DECLINE_PRIVACY_BUDGET),
        QuorumReached(run_id=RUN, round=2, attempt=1, model_version=1, update_ids=("u-c3-2", "u-c0-2"), partial=True,
                      base_model_digest="m1", update_digests=("d-c3-2", "d-c0-2"), sample_counts=(10, 10)),
        accepted("c1", 2, late=True, version=1),
        aggregated(2),
        started(3, 2, 9.0),
        RoundFailed(run_id=RUN, round=3, attempt=1, reason="deadline"),
        RunCompleted(run_id=RUN, reason="stopped", rounds=2, metrics={}),
    ]  # fmt: skip


def test_folding_into_a_fork_leaves_the_run_as_it_was_and_gives_what_a_deep_copy_gives() -> None:
    for asynchronous in (False, True):
        run = history(asynchronous)
        before = copy.deepcopy(run)
        fork, deep = run.fork(), copy.deepcopy(run)
        for at, event in enumerate(what_if(), 10):
            fork.apply(event, float(at))
            deep.apply(event, float(at))
        assert run == before
        assert fork == deep
        assert fork != run  # the events did change the fork


def test_a_fork_shares_no_container_with_the_run() -> None:
    # A field added to RunState or RoundState that the fold changes in place must be copied by fork (or be
    # immutable): this lists the fields that may be shared, and fails for any other shared container.
    shareable = {"config", "sampling"}
    run = history(asynchronous=True)
    fork = run.fork()
    assert run.current is not None and fork.current is not None
    for original, copied in ((run, fork), (run.current, fork.current)):
        for spec in dataclasses.fields(original):
            value = getattr(original, spec.name)
            if isinstance(value, (dict, list, set, RoundState)) and spec.name not in shareable:
                assert getattr(copied, spec.name) is not value, f"{type(original).__name__}.{spec.name} is shared"
