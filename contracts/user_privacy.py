"""User-level (client-level) differential privacy: DP-FedAvg with adaptive clipping, table ``[run.user_privacy]``.

Record-level DP-SGD (``[run.privacy]``) bounds what one training example can change; this bounds what one
*client*, all its data together, can change in the released models. Each round every eligible client is
sampled independently with probability q (Poisson sampling); the aggregator clips each client's update to
the L2 norm C, sums, adds Gaussian noise and divides by the expected cohort q·N (McMahan et al. 2018,
"Learning Differentially Private Recurrent Language Models"). With `adaptive`, C follows the
`target_quantile` of the update norms, estimated privately from the noisy count of unclipped updates
(Andrew et al. 2021, "Differentially Private Learning with Adaptive Clipping", Algorithm 1).

The two noises split one budget (the paper's Theorem 1): with sigma_b the count's noise and z the run's noise
multiplier, the sum gets z_Δ = (z⁻² - (2sigma_b)⁻²)^(-1/2), so the pair is as private as one Gaussian mechanism
of multiplier z, which is what the accountant is told.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from contracts.catalog import FEDAVG
from contracts.checks import BUDGET_TOLERANCE, check_flag, check_range
from contracts.errors import ConfigError

__all__ = [
    "COUNT_NOISE_DIVISOR",
    "USER_CLIP_NORM",
    "USER_EPSILON",
    "USER_EPSILON_AMPLIFIED",
    "USER_EPSILON_NEXT",
    "USER_EPSILON_REASON",
    "USER_NEXT_CLIP_NORM",
    "UserPrivacyConfig",
]

COUNT_NOISE_DIVISOR = 20.0  # sigma_b = q·clients / 20 unless clip_count_stddev says otherwise (Andrew et al. §4)

# The aggregator's RoundAggregated.metrics with user-level DP on, which the fold, reports and the API read.
USER_EPSILON = "user_epsilon"  # spent by the released models so far, at user_privacy.delta
USER_EPSILON_NEXT = "user_epsilon_next"  # ... after one more round like the ones so far: the budget check
USER_EPSILON_AMPLIFIED = "user_epsilon_amplified"  # whether it counts the sampling's amplification (bool)
USER_EPSILON_REASON = "user_epsilon_reason"  # why, in words
USER_CLIP_NORM = "user_clip_norm"  # the C this round clipped to
USER_NEXT_CLIP_NORM = "user_next_clip_norm"  # the C the next round clips to (adaptive clipping's step)


@dataclass(frozen=True, slots=True, kw_only=True)
class UserPrivacyConfig:
    """User-level DP-FedAvg at the aggregator; off by default. Every option is checked, on or off."""

    enabled: bool = False
    noise_multiplier: float = 1.0  # z: the noise of the whole round, in units of the clip norm
    clip_norm: float = 0.1  # C of the first round; with `adaptive` it moves from there
    adaptive: bool = True
    target_quantile: float = 0.5  # gamma: the fraction of updates C should leave unclipped
    clip_lr: float = 0.2  # η_C of the geometric update C ← C·exp(-η_C (b̃ - gamma))
    clip_count_stddev: float | None = None  # sigma_b; None: q·clients / 20
    sample_rate: float = 1.0  # q: each eligible client joins a round with this probability, independently
    delta: float = 1e-5
    epsilon: float | None = None  # a budget: the run ends (reason budget) before a round would pass it

    def __post_init__(self) -> None:
        for flag in ("enabled", "adaptive"):
            check_flag(f"user_privacy.{flag}", getattr(self, flag))
        check_range("user_privacy.noise_multiplier", self.noise_multiplier, 0.0, 1000.0, low_open=True)
        check_range("user_privacy.clip_norm", self.clip_norm, 0.0, 1e9, low_open=True)
        check_range("user_privacy.target_quantile", self.target_quantile, 0.0, 1.0)
        check_range("user_privacy.clip_lr", self.clip_lr, 0.0, 10.0, low_open=True)
        if self.clip_count_stddev is not None:
            check_range("user_privacy.clip_count_stddev", self.clip_count_stddev, 0.0, 1e9, low_open=True)
        check_range("user_privacy.sample_rate", self.sample_rate, 0.0, 1.0, low_open=True)
        check_range("user_privacy.delta", self.delta, 0.0, 0.1, low_open=True)
        if self.epsilon is not None:
            check_range("user_privacy.epsilon", self.epsilon, 0.0, 1000.0, low_open=True)

    def count_stddev(self, clients: int) -> float:
        """sigma_b, the noise on the count of unclipped updates (0 without adaptive clipping)."""
        if not self.adaptive:
            return 0.0
        if self.clip_count_stddev is not None:
            return self.clip_count_stddev
        return self.sample_rate * clients / COUNT_NOISE_DIVISOR

    def sum_noise_multiplier(self, clients: int) -> float:
        """z_Δ, the noise multiplier of the clipped sum once the count has taken its share of z.

        ConfigError("user_privacy.noise_multiplier") when z ≥ 2sigma_b: the count alone would need more noise
        than the whole budget allows."""
        z = self.noise_multiplier
        if not self.adaptive:
            return z
        sigma_b = self.count_stddev(clients)
        if z >= 2 * sigma_b:
            detail = (
                f"z={z:g} leaves nothing for the clipped sum once adaptive clipping's count noise "
                f"sigma_b={sigma_b:g} (q·clients/{COUNT_NOISE_DIVISOR:g} unless clip_count_stddev is set) takes its "
                "share: z must be < 2sigma_b; raise sample_rate or clients, set clip_count_stddev, or adaptive = false"
            )
            raise ConfigError("user_privacy.noise_multiplier", detail)
        # (z^-2 - (2sigma_b)^-2)^-1/2, written so that a tiny z does not overflow z^-2
        return float(z / math.sqrt(1.0 - (z / (2 * sigma_b)) ** 2))

    def exceeded_by(self, spent: float) -> bool:
        """Whether ``spent`` is past the budget (beyond the accountant's float noise); never without one."""
        return self.epsilon is not None and spent > self.epsilon * (1 + BUDGET_TOLERANCE)

    def check_against(
        self, *, clients: int, aggregator: str, clip_norm: float | None, clients_per_round: float
    ) -> None:
        """ConfigError naming the round option that breaks the privacy proof when this is on."""
        if not self.enabled:
            return
        if aggregator != FEDAVG:
            detail = f"must be {FEDAVG} (the mean) with user_privacy on: the proof bounds one client's share of a mean"
            raise ConfigError("round.aggregator", f"{detail}, got {aggregator!r:.100}")
        if clip_norm is not None:
            raise ConfigError("round.clip_norm", "leave it unset with user_privacy on: user_privacy.clip_norm clips")
        if clients_per_round != 1.0:
            detail = "leave it at 1 with user_privacy on: each client is sampled at user_privacy.sample_rate"
            raise ConfigError("round.clients_per_round", f"{detail}, got {clients_per_round!r:.100}")
        self.sum_noise_multiplier(clients)
