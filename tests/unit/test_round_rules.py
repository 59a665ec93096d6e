"""Selection, quorum, deadline and convergence decisions of the round."""

from __future__ import annotations

import pytest

from contracts.config import RoundConfig, RunConfig
from contracts.run_state import AcceptedUpdate, RoundState, quorum_size
from services.coordinator.rules import RoundDecision, StopReason, close_decision, convergence, select_clients


def open_round(selected: int = 4, *, deadline: float = 100.0) -> RoundState:
    return RoundState(
        round=1, attempt=1, model_version=0, model_digest="d", selected=tuple(f"c{i}" for i in range(selected)),
        deadline=deadline, started_at=0.0,
    )  # fmt: skip


def updates(*clients: str) -> dict[str, AcceptedUpdate]:
    return {c: AcceptedUpdate(update_id=f"u-{c}", digest="d" * 64, num_samples=10, loss=0.5) for c in clients}


def config(**round_options: object) -> RunConfig:
    return RunConfig(clients=4, rounds=5, round=RoundConfig(**round_options))  # type: ignore[arg-type]


def test_selection_is_seeded_and_sized_by_the_fraction() -> None:
    eligible = [f"c{i}" for i in range(10)]

    first = select_clients(eligible, 0.3, seed=1, round_=2, attempt=1)

    assert len(first) == 3 and set(first) <= set(eligible)
    assert first == select_clients(list(reversed(eligible)), 0.3, seed=1, round_=2, attempt=1)
    assert any(select_clients(eligible, 0.3, seed=1, round_=r, attempt=1) != first for r in range(3, 8))


def test_quorum_size_respects_min_updates_and_the_selection() -> None:
    assert quorum_size(10, 0.8, 1) == 8
    assert quorum_size(10, 0.1, 3) == 3
    assert quorum_size(2, 0.5, 5) == 2


def test_round_closes_at_the_quorum_without_grace() -> None:
    round_ = open_round()
    round_.accepted = updates("c0", "c1", "c2")

    assert close_decision(round_, config(quorum=0.75), now=1.0) is RoundDecision.QUORUM
    assert close_decision(round_, config(quorum=1.0), now=1.0) is RoundDecision.WAIT


def test_grace_period_waits_for_stragglers_then_closes() -> None:
    round_ = open_round()
    round_.accepted = updates("c0", "c1", "c2")
    round_.quorum_at = 10.0
    cfg = config(quorum=0.75, grace_s=5.0)

    assert close_decision(round_, cfg, now=12.0) is RoundDecision.WAIT
    assert close_decision(round_, cfg, now=15.0) is RoundDecision.QUORUM


def test_deadline_closes_with_enough_updates_and_fails_below_min_updates() -> None:
    round_ = open_round(deadline=50.0)
    round_.accepted = updates("c0")

    assert close_decision(round_, config(quorum=1.0, min_updates=1), now=50.0) is RoundDecision.QUORUM
    assert close_decision(round_, config(quorum=1.0, min_updates=2), now=50.0) is RoundDecision.FAIL
    assert close_decision(round_, config(quorum=1.0, min_updates=2), now=49.0) is RoundDecision.WAIT


def test_when_everyone_answered_the_round_does_not_wait_for_the_deadline() -> None:
    round_ = open_round(selected=2)
    round_.rejected = {"c0"}
    round_.declined = {"c1"}

    assert close_decision(round_, config(quorum=1.0, min_updates=1), now=1.0) is RoundDecision.FAIL


@pytest.mark.parametrize(
    ("accuracies", "options", "reason"),
    [
        ([0.5, 0.9], {"target_accuracy": 0.9}, StopReason.TARGET),
        ([0.5, 0.8, 0.8, 0.8], {"patience": 2, "min_delta": 0.01}, StopReason.CONVERGED),
        ([0.1] * 5, {}, StopReason.MAX_ROUNDS),
        ([0.5, 0.6], {"target_accuracy": 0.9, "patience": 2}, None),
    ],
)
def test_convergence(accuracies: list[float], options: dict[str, float], reason: StopReason | None) -> None:
    assert convergence(accuracies, RunConfig(rounds=5, **options)) is reason  # type: ignore[arg-type]
