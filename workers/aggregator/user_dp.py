"""User-level DP-FedAvg at the aggregator: one round from its QuorumReached to the noised update, the clip
norm the next round uses and the user-level epsilon the released models have spent.

The arithmetic is in workers/learning/user_privacy.py and user_accounting.py; this reads the round's
sampling record and the carried state, and writes the state entries and metrics back.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from contracts.config import RunConfig
from contracts.events import SAMPLING_POISSON, QuorumReached
from contracts.tensors import TensorDict, TensorMapping
from contracts.user_privacy import (
    USER_CLIP_NORM,
    USER_EPSILON,
    USER_EPSILON_AMPLIFIED,
    USER_EPSILON_NEXT,
    USER_EPSILON_REASON,
    USER_NEXT_CLIP_NORM,
)
from workers.learning.user_accounting import UserEpsilon, account, amplification_lost, user_epsilon
from workers.learning.user_privacy import ClippedSum, ClipState, next_clip_norm


class UserLevelRound:
    """The round's aggregator (count, add, result, as the other rules), then `privacy()`: what it leaves.

    ValueError from the constructor when the round's sampling record or the carried state does not fit
    (a ConfigError when the noise multiplier is too small for adaptive clipping's share)."""

    def __init__(
        self,
        config: RunConfig,
        base: TensorMapping,
        state: TensorMapping,
        quorum: QuorumReached,
        rng: np.random.Generator,
    ) -> None:
        dp = config.user_privacy
        self._dp, self._quorum, self._rng = dp, quorum, rng
        self._clip, self.strategy_state = ClipState.split(state, dp.clip_norm)
        self._expected = expected_cohort(quorum.sampling)
        self._sum_noise = dp.sum_noise_multiplier(config.clients)
        self._count_noise = dp.count_stddev(config.clients)
        self._accountant = config.privacy.accountant
        self._sum = ClippedSum(base, self._clip.clip_norm)
        self._next_clip = self._clip.clip_norm
        self._fraction: float | None = None

    @property
    def count(self) -> int:
        return self._sum.count

    def add(self, update: TensorMapping, num_samples: int) -> None:
        self._sum.add(update, num_samples)

    def result(self) -> TensorDict:
        """The noised mean of the clipped updates (noise only for an empty cohort); moves the clip norm."""
        dp, rng = self._dp, self._rng
        mean = self._sum.noised_mean(noise_multiplier=self._sum_noise, expected=self._expected, rng=rng)
        if dp.adaptive:
            self._next_clip, self._fraction = next_clip_norm(
                self._sum,
                count_stddev=self._count_noise,
                expected=self._expected,
                target_quantile=dp.target_quantile,
                clip_lr=dp.clip_lr,
                rng=rng,
            )
        return mean

    def privacy(self) -> tuple[TensorDict, dict[str, Any], UserEpsilon]:
        """After `result`: the state entries to keep beside the strategy's, the round's metrics, and the
        epsilon with this round released. Opacus' accountant: up to a few seconds with prv."""
        quorum, clip = self._quorum, self._clip
        cause = amplification_lost(
            round_=quorum.round, attempt=quorum.attempt, sampling=quorum.sampling, partial=quorum.partial
        )
        since = clip.unamplified_since or (quorum.round if cause else 0)
        rounds = clip.rounds + 1
        spent = account(
            noise_multiplier=self._dp.noise_multiplier,
            sample_rate=self._dp.sample_rate,
            rounds=rounds,
            delta=self._dp.delta,
            accountant=self._accountant,
            unamplified_since=since,
            cause=cause if since == quorum.round else None,
        )
        metrics: dict[str, Any] = {
            USER_EPSILON: spent.epsilon,
            USER_EPSILON_NEXT: spent.epsilon_next,
            USER_EPSILON_AMPLIFIED: spent.amplified,
            USER_EPSILON_REASON: spent.reason,
            USER_CLIP_NORM: clip.clip_norm,
            USER_NEXT_CLIP_NORM: self._next_clip,
            "user_delta": self._dp.delta,
            "user_expected_cohort": self._expected,
            "user_cohort": self._sum.count,
        }
        if self._fraction is not None:
            metrics["user_unclipped_fraction"] = self._fraction  # noised: as private as the model
        kept = ClipState(clip_norm=self._next_clip, rounds=rounds, unamplified_since=since)
        return kept.to_state(), metrics, spent


def first_round_epsilon(config: RunConfig) -> float:
    """The user-level epsilon one released round spends (a Poisson sample at the run's rate)."""
    dp = config.user_privacy
    _, after = user_epsilon(
        noise_multiplier=dp.noise_multiplier,
        sample_rate=dp.sample_rate,
        rounds=0,
        delta=dp.delta,
        accountant=config.privacy.accountant,
        amplified=True,
    )
    return after


def expected_cohort(sampling: Mapping[str, Any]) -> float:
    """q·N from a round's sampling record; ValueError unless it is a Poisson sample of N >= 1 clients."""
    rate, population = sampling.get("rate"), sampling.get("population")
    numbers = all(isinstance(v, int | float) and not isinstance(v, bool) for v in (rate, population))
    if sampling.get("kind") != SAMPLING_POISSON or not numbers:
        raise ValueError(f"user-level DP needs a Poisson-sampled round, its sampling is {dict(sampling)!r:.200}")
    assert isinstance(rate, int | float) and isinstance(population, int | float)
    if not (0 < rate <= 1 and population >= 1):
        raise ValueError(f"a Poisson sample at rate {rate} of {population} clients has no expected cohort")
    return float(rate) * float(population)
