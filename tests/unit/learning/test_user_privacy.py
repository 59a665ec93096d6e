"""DP-FedAvg with adaptive clipping (workers/learning/user_privacy.py) against hand-computed values."""

from __future__ import annotations

import math

import numpy as np
import pytest

from contracts.errors import ConfigError
from contracts.user_privacy import UserPrivacyConfig
from workers.learning.user_privacy import CLIP_NORM, ROUNDS, UNAMPLIFIED_SINCE, ClippedSum, ClipState, next_clip_norm

BASE = {"a": np.zeros(2, np.float32), "b": np.zeros(1, np.float32), "steps": np.array([7], np.int64)}


def no_noise() -> np.random.Generator:
    return np.random.default_rng(0)


def test_each_update_is_clipped_to_c_over_all_float_tensors_and_the_sum_divided_by_the_expected_cohort() -> None:
    summed = ClippedSum(BASE, clip_norm=1.0)
    summed.add({"a": np.array([3.0, 0.0], np.float32), "b": np.array([4.0], np.float32)}, 10)  # norm 5: scaled by 1/5
    summed.add({"a": np.array([0.1, 0.0], np.float32), "b": np.array([0.0], np.float32)}, 10)  # norm 0.1: kept

    mean = summed.noised_mean(noise_multiplier=0.0, expected=4.0, rng=no_noise())

    assert summed.count == 2 and summed.unclipped == 1
    np.testing.assert_allclose(mean["a"], [(0.6 + 0.1) / 4, 0.0], rtol=1e-6)
    np.testing.assert_allclose(mean["b"], [0.8 / 4], rtol=1e-6)
    assert set(mean) == {"a", "b"} and mean["a"].dtype == np.float32  # the int counter is the model's own


def test_sample_counts_do_not_weight_the_mean() -> None:
    update = {"a": np.array([0.2, 0.0], np.float32), "b": np.array([0.0], np.float32)}
    light, heavy = ClippedSum(BASE, 1.0), ClippedSum(BASE, 1.0)
    light.add(update, 1)
    heavy.add(update, 100_000)

    np.testing.assert_array_equal(
        light.noised_mean(noise_multiplier=0.0, expected=1.0, rng=no_noise())["a"],
        heavy.noised_mean(noise_multiplier=0.0, expected=1.0, rng=no_noise())["a"],
    )


def test_an_update_with_other_tensors_than_the_model_is_refused() -> None:
    with pytest.raises(ValueError, match="differ"):
        ClippedSum(BASE, 1.0).add({"a": np.zeros(2, np.float32)}, 1)


def test_the_noise_std_per_coordinate_is_z_delta_times_c_over_q_n() -> None:
    base = {"w": np.zeros(200_000, np.float32)}
    summed = ClippedSum(base, clip_norm=0.4)
    z_delta, expected = 1.5, 8.0  # e.g. q = 0.1 of N = 80 clients

    mean = summed.noised_mean(noise_multiplier=z_delta, expected=expected, rng=np.random.default_rng(3))["w"]

    # 200k draws: the sample std is within ~0.2% of the true one (1 / sqrt(2n)), the mean within 3 sigma / sqrt(n)
    assert float(np.std(mean)) == pytest.approx(z_delta * 0.4 / expected, rel=0.01)
    assert abs(float(np.mean(mean))) < 3 * 0.075 / math.sqrt(200_000)


def test_an_empty_cohort_gives_noise_only_of_the_model_shape() -> None:
    mean = ClippedSum(BASE, 0.5).noised_mean(noise_multiplier=1.0, expected=2.0, rng=np.random.default_rng(1))

    assert {k: v.shape for k, v in mean.items()} == {"a": (2,), "b": (1,)}
    assert np.all(mean["a"] != 0)


def test_the_sum_noise_leaves_the_total_noise_multiplier_at_z() -> None:
    dp = UserPrivacyConfig(enabled=True, noise_multiplier=1.0, clip_count_stddev=1.0)

    z_delta = dp.sum_noise_multiplier(clients=100)

    assert z_delta == pytest.approx((1.0 - 0.25) ** -0.5)  # (z^-2 - (2 sigma_b)^-2)^-1/2 = 1.1547
    assert (z_delta**-2 + (2 * 1.0) ** -2) ** -0.5 == pytest.approx(1.0)  # Theorem 1: together they are z


def test_a_tiny_noise_multiplier_gives_its_sum_noise_without_overflowing() -> None:
    # found by the API's schemathesis run: z^-2 overflowed a float and POST /runs answered 500
    dp = UserPrivacyConfig(enabled=True, noise_multiplier=6.6e-189, clip_count_stddev=1.0)

    assert dp.sum_noise_multiplier(clients=10) == pytest.approx(6.6e-189)


def test_the_count_noise_defaults_to_the_expected_cohort_over_20() -> None:
    dp = UserPrivacyConfig(enabled=True, sample_rate=0.1, noise_multiplier=1.0)

    assert dp.count_stddev(clients=1000) == pytest.approx(5.0)  # q N / 20
    assert dp.sum_noise_multiplier(clients=1000) == pytest.approx((1 - 1 / 100) ** -0.5)
    assert UserPrivacyConfig(adaptive=False).sum_noise_multiplier(clients=1) == 1.0


def test_a_noise_multiplier_too_small_for_the_count_noise_is_an_error_naming_it() -> None:
    with pytest.raises(ConfigError) as error:
        UserPrivacyConfig(enabled=True, sample_rate=0.1, noise_multiplier=1.0).sum_noise_multiplier(clients=100)

    assert error.value.field == "user_privacy.noise_multiplier" and "2sigma_b" in error.value.message


def test_the_clip_norm_steps_geometrically_toward_the_quantile() -> None:
    summed = ClippedSum({"w": np.zeros(1, np.float32)}, clip_norm=2.0)
    for norm in (1.0, 1.5, 3.0, 4.0):  # two of four within C: b = 0.5
        summed.add({"w": np.array([norm], np.float32)}, 1)

    clip, fraction = next_clip_norm(
        summed, count_stddev=0.0, expected=4.0, target_quantile=0.25, clip_lr=0.2, rng=no_noise()
    )

    assert fraction == 0.5
    assert clip == pytest.approx(2.0 * math.exp(-0.2 * (0.5 - 0.25)))  # too many unclipped: C shrinks


@pytest.mark.parametrize("quantile", [0.3, 0.7])
def test_the_adaptive_clip_norm_settles_near_the_target_quantile_of_the_norms(quantile: float) -> None:
    rng = np.random.default_rng(11)
    clip, cohort, history = 0.1, 200, []
    for _ in range(400):
        summed = ClippedSum({"w": np.zeros(1, np.float32)}, clip_norm=clip)
        for norm in rng.uniform(1.0, 3.0, size=cohort):
            summed.add({"w": np.array([norm], np.float32)}, 1)
        clip, _ = next_clip_norm(
            summed, count_stddev=cohort / 20, expected=cohort, target_quantile=quantile, clip_lr=0.2, rng=rng
        )
        history.append(clip)

    settled = float(np.mean(history[-100:]))
    assert settled == pytest.approx(1.0 + 2.0 * quantile, abs=0.08)  # the uniform(1, 3) quantile


def test_the_clip_state_round_trips_beside_the_strategys_own_state() -> None:
    kept = ClipState(clip_norm=0.37, rounds=4, unamplified_since=3)
    blob = {**kept.to_state(), "m.w": np.ones(2, np.float32)}

    taken, rest = ClipState.split(blob, initial_clip_norm=9.0)

    assert taken == kept and set(rest) == {"m.w"}
    assert ClipState.split({"m.w": np.ones(2)}, initial_clip_norm=0.1)[0] == ClipState(clip_norm=0.1)


@pytest.mark.parametrize(
    "state",
    [
        {CLIP_NORM: np.array([0.5])},  # the counters missing
        {CLIP_NORM: np.array([-1.0]), ROUNDS: np.array([1]), UNAMPLIFIED_SINCE: np.array([0])},
        {CLIP_NORM: np.array([0.5, 0.5]), ROUNDS: np.array([1]), UNAMPLIFIED_SINCE: np.array([0])},
    ],
)
def test_a_clip_state_that_is_not_one_is_refused(state: dict[str, np.ndarray]) -> None:
    with pytest.raises(ValueError, match="user-level DP state"):
        ClipState.split(state, initial_clip_norm=0.1)
