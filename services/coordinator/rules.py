"""Pure decisions of the round: selection, quorum, deadlines and convergence (DESIGN.md §7)."""

from __future__ import annotations

import math
import random
from collections.abc import Sequence
from enum import StrEnum

from contracts.config import RunConfig
from contracts.events import RUN_BUDGET
from contracts.run_state import RoundState, needed_updates


class StopReason(StrEnum):
    TARGET = "target"
    CONVERGED = "converged"
    MAX_ROUNDS = "max_rounds"
    BUDGET = RUN_BUDGET
    FAILED = "failed"
    STOPPED = "stopped"


def select_clients(
    eligible: Sequence[str], fraction: float, *, seed: int, round_: int, attempt: int
) -> tuple[str, ...]:
    """A seeded sample of ceil(fraction * eligible) clients, different for every round and attempt."""
    count = max(1, math.ceil(fraction * len(eligible))) if eligible else 0
    return select_count(eligible, count, seed=seed, round_=round_, attempt=attempt)


def select_count(eligible: Sequence[str], count: int, *, seed: int, round_: int, attempt: int) -> tuple[str, ...]:
    """A seeded sample of `count` of the eligible clients (all of them when there are fewer)."""
    pool = sorted(eligible)
    rng = random.Random(f"{seed}:{round_}:{attempt}")
    return tuple(sorted(rng.sample(pool, min(count, len(pool)))))


def poisson_sample(eligible: Sequence[str], rate: float, *, seed: int, round_: int, attempt: int) -> tuple[str, ...]:
    """Each eligible client independently with probability `rate`, seeded per round and attempt: the sampling
    user-level DP's amplification assumes. The sample may be empty; it is as reproducible as the seed is known."""
    rng = random.Random(f"poisson:{seed}:{round_}:{attempt}")
    return tuple(client for client in sorted(eligible) if rng.random() < rate)


def user_budget_reached(epsilon_next: float | None, config: RunConfig) -> bool:
    """Whether the next round would take the user-level epsilon past `user_privacy.epsilon` (the aggregator
    reports that figure with each round; None before the first)."""
    return epsilon_next is not None and config.user_privacy.exceeded_by(epsilon_next)


class RoundDecision(StrEnum):
    WAIT = "wait"
    QUORUM = "quorum"
    FAIL = "fail"


def close_decision(
    round_: RoundState, config: RunConfig, now: float, *, nobody_training: bool = False
) -> RoundDecision:
    """Whether an open round should close now, and how: the grace period runs from the fold's `quorum_at`.

    A FedBuff buffer has no cohort that could all have answered: clients of earlier buffers may still send to
    it, so it closes on its size, at its deadline, or once `nobody_training` (no client has work outstanding
    that could still count in it: every one answered, declined or left, so nothing more can arrive)."""
    if round_.closed:
        return RoundDecision.WAIT
    accepted = len(round_.accepted)
    asynchronous = config.strategy.asynchronous
    everyone_answered = nobody_training if asynchronous else round_.responded >= len(round_.selected)
    enough = accepted >= needed_updates(round_, config)
    if enough and (everyone_answered or config.round.grace_s == 0):
        return RoundDecision.QUORUM
    if enough and round_.quorum_at is not None and now >= round_.quorum_at + config.round.grace_s:
        return RoundDecision.QUORUM
    if now >= round_.deadline or everyone_answered:
        if accepted >= config.round.min_updates:
            return RoundDecision.QUORUM
        return RoundDecision.FAIL
    return RoundDecision.WAIT


def convergence(accuracies: Sequence[float], config: RunConfig) -> StopReason | None:
    """Stop on the target accuracy, on no improvement for `patience` rounds, or at the round limit."""
    if config.target_accuracy is not None and accuracies and accuracies[-1] >= config.target_accuracy:
        return StopReason.TARGET
    if config.patience > 0 and len(accuracies) > config.patience:
        best_before = max(accuracies[: -config.patience])
        if max(accuracies[-config.patience :]) < best_before + config.min_delta:
            return StopReason.CONVERGED
    if len(accuracies) >= config.rounds:
        return StopReason.MAX_ROUNDS
    return None
