"""User-level epsilon (workers/learning/user_accounting.py) is Opacus' epsilon of the sampled Gaussian."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from opacus.accountants import PRVAccountant, RDPAccountant

from workers.learning.user_accounting import account, amplification_lost, user_epsilon


def opacus_epsilon(accountant: str, noise: float, rate: float, steps: int, delta: float) -> float:
    if accountant == "rdp":
        rdp = RDPAccountant()
        rdp.history = [(noise, rate, steps)]
        return float(rdp.get_epsilon(delta))
    prv = PRVAccountant()
    prv.history = [(noise, rate, steps)]
    with np.errstate(divide="ignore"):
        return float(prv.get_epsilon(delta, eps_error=0.01))


@pytest.mark.parametrize(("accountant", "noise", "rate", "rounds"), [("rdp", 1.1, 0.05, 100), ("prv", 0.9, 0.2, 30)])
def test_the_user_epsilon_is_opacus_epsilon_for_the_same_rate_noise_and_rounds(
    accountant: str, noise: float, rate: float, rounds: int
) -> None:
    spent, after = user_epsilon(
        noise_multiplier=noise, sample_rate=rate, rounds=rounds, delta=1e-5, accountant=accountant, amplified=True
    )

    assert spent == pytest.approx(opacus_epsilon(accountant, noise, rate, rounds, 1e-5), rel=1e-6)
    assert after == pytest.approx(opacus_epsilon(accountant, noise, rate, rounds + 1, 1e-5), rel=1e-6)
    assert after > spent


def test_without_amplification_every_round_counts_at_rate_one() -> None:
    spent = account(
        noise_multiplier=1.0, sample_rate=0.1, rounds=5, delta=1e-5, accountant="rdp", unamplified_since=3,
        cause="round 3 closed without some of its sampled clients (declined, refused or late)",
    )  # fmt: skip

    assert spent.epsilon == pytest.approx(opacus_epsilon("rdp", 1.0, 1.0, 5, 1e-5), rel=1e-6)
    assert not spent.amplified and "round 3 closed without" in spent.reason and "q=1" in spent.reason
    amplified = account(
        noise_multiplier=1.0, sample_rate=0.1, rounds=5, delta=1e-5, accountant="rdp", unamplified_since=0
    )
    assert amplified.amplified and amplified.epsilon < spent.epsilon / 3


POISSON = {"kind": "poisson", "rate": 0.1, "population": 50}


@pytest.mark.parametrize(
    ("sampling", "attempt", "partial", "says"),
    [
        (POISSON, 1, False, None),
        (POISSON, 1, True, "closed without some of its sampled clients"),
        (POISSON, 2, False, "attempt 2"),
        ({"kind": "fixed", "fraction": 0.5}, 1, False, "not Poisson-sampled (sampling fixed)"),
        ({}, 1, False, "unrecorded"),
    ],
)
def test_only_a_first_attempt_with_its_whole_poisson_sample_keeps_the_amplification(
    sampling: dict[str, Any], attempt: int, partial: bool, says: str | None
) -> None:
    reason = amplification_lost(round_=4, attempt=attempt, sampling=sampling, partial=partial)

    assert reason == says if says is None else says in (reason or "")
