"""User-level epsilon of DP-FedAvg with Opacus' accountants (the run's `privacy.accountant`, rdp or prv).

Each released round is one step of the sampled Gaussian mechanism: every client joins with probability q
(Poisson sampling), its clipped update has sensitivity C, and the sum and the clip count together are as
private as one Gaussian of noise multiplier z (Andrew et al. 2021, Theorem 1). So the user-level epsilon
after T rounds is Opacus' epsilon for (z, q, T steps) at `user_privacy.delta`, through the same ledger the
clients keep for record-level DP-SGD (workers/learning/privacy.py).

The amplification by q holds only when the aggregated cohort *is* the Poisson sample. A round that closed
without some of its sampled clients (a decline, a refused update, the deadline), one that is a retry (its
cohort the first draw that got through), or one drawn otherwise, breaks that; from such a round on, the
run's epsilon counts every round at q = 1: the Gaussian mechanism's bound, which holds whoever took part.
Switching back and forth per round would make the accounting depend on which clients answered, which is
itself private.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from contracts.events import SAMPLING_POISSON
from workers.learning.privacy import PrivacyLedger


@dataclass(frozen=True, slots=True, kw_only=True)
class UserEpsilon:
    """What the released rounds have spent, and what one more round like them would bring."""

    epsilon: float
    epsilon_next: float
    amplified: bool
    reason: str


def amplification_lost(*, round_: int, attempt: int, sampling: Mapping[str, Any], partial: bool) -> str | None:
    """Why this round's aggregated cohort is no Poisson sample of its clients; None when it is one."""
    kind = sampling.get("kind")
    if kind != SAMPLING_POISSON:
        return f"round {round_} was not Poisson-sampled (sampling {kind or 'unrecorded'})"
    if attempt > 1:
        return f"round {round_} is attempt {attempt}: a retry's cohort is the first draw that got through"
    if partial:
        return f"round {round_} closed without some of its sampled clients (declined, refused or late)"
    return None


def user_epsilon(
    *, noise_multiplier: float, sample_rate: float, rounds: int, delta: float, accountant: str, amplified: bool
) -> tuple[float, float]:
    """(epsilon after `rounds` released rounds, after one more), at rate `sample_rate` when `amplified`,
    else at q = 1."""
    rate = sample_rate if amplified else 1.0
    ledger = PrivacyLedger(accountant)
    ledger.record(noise_multiplier, rate, rounds)
    return ledger.epsilon(delta), ledger.epsilon_after(noise_multiplier, rate, 1, delta)


def account(
    *,
    noise_multiplier: float,
    sample_rate: float,
    rounds: int,
    delta: float,
    accountant: str,
    unamplified_since: int,
    cause: str | None = None,
) -> UserEpsilon:
    """The run's user-level epsilon after `rounds` rounds; `unamplified_since` the first round that lost the
    amplification (0: none did), `cause` why, when it is the latest one."""
    amplified = unamplified_since == 0
    spent, after = user_epsilon(
        noise_multiplier=noise_multiplier,
        sample_rate=sample_rate,
        rounds=rounds,
        delta=delta,
        accountant=accountant,
        amplified=amplified,
    )
    if amplified:
        reason = f"every round was a Poisson sample at q={sample_rate:g}: amplified by sampling"
    elif cause is not None:
        reason = f"{cause}: no Poisson sample, so from here on every round counts at q=1"
    else:
        reason = f"round {unamplified_since} was no Poisson sample of its clients: every round counts at q=1"
    return UserEpsilon(epsilon=spent, epsilon_next=after, amplified=amplified, reason=reason)
