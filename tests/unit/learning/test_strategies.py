"""Each strategy's server step against the update equations (Reddi et al. 2021, Algorithm 2; Hsu et al. 2019),
worked by hand on a two-parameter model: x = [1, 1], then updates Δ1 = [0.2, -0.4] and Δ2 = [0.1, 0.1]."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from contracts.errors import ConfigError
from contracts.strategy import STRATEGIES, StrategyConfig
from contracts.tensors import TensorDict
from workers.learning.strategies import STEP, STRATEGY_NAMES, server_step

X = {"w": np.array([1.0, 1.0], np.float32), "count": np.array([7], np.int64)}
D1 = {"w": np.array([0.2, -0.4], np.float32)}
D2 = {"w": np.array([0.1, 0.1], np.float32)}
ADAPTIVE = {"server_lr": 0.1, "beta1": 0.9, "beta2": 0.99, "tau": 1e-3}


def two_rounds(name: str, **options: Any) -> tuple[TensorDict, TensorDict, TensorDict]:
    strategy = StrategyConfig(name=name, options=options)
    x1, state1 = server_step(strategy, X, D1, {})
    x2, state2 = server_step(strategy, x1, D2, state1)
    return x1, x2, state2


def test_fedavg_and_fedprox_add_the_combined_update_and_keep_no_state() -> None:
    for name in ("fedavg", "fedprox"):
        x1, x2, state = two_rounds(name)
        np.testing.assert_allclose(x1["w"], [1.2, 0.6], rtol=1e-6)
        np.testing.assert_allclose(x2["w"], [1.3, 0.7], rtol=1e-6)
        assert state == {}


def test_fedavgm_accumulates_server_momentum() -> None:
    # m1 = Δ1; x1 = x + m1.  m2 = 0.9 m1 + Δ2 = [0.28, -0.26]; x2 = x1 + m2 = [1.48, 0.34].
    x1, x2, state = two_rounds("fedavgm", server_lr=1.0, momentum=0.9)

    np.testing.assert_allclose(x1["w"], [1.2, 0.6], rtol=1e-6)
    np.testing.assert_allclose(x2["w"], [1.48, 0.34], rtol=1e-6)
    np.testing.assert_allclose(state["m.w"], [0.28, -0.26], rtol=1e-6)


def test_fedadam_with_bias_correction() -> None:
    # t=1: m = 0.1 Δ1, v = 0.01 Δ1²; m̂ = Δ1, v̂ = Δ1²; x1 = x + 0.1 Δ1 / (|Δ1| + 1e-3).
    # t=2: m = [0.028, -0.026], v = 0.99 v + 0.01 Δ2² = [0.000496, 0.001684]; m̂ = m / 0.19, v̂ = v / 0.0199.
    x1, x2, state = two_rounds("fedadam", **ADAPTIVE)

    np.testing.assert_allclose(x1["w"], [1.0995025, 0.9002494], rtol=1e-6)
    np.testing.assert_allclose(x2["w"], [1.1922598, 0.8533697], rtol=1e-6)
    np.testing.assert_allclose(state["m.w"], [0.028, -0.026], rtol=1e-5)
    np.testing.assert_allclose(state["v.w"], [0.000496, 0.001684], rtol=1e-5)
    assert state[STEP].tolist() == [2.0]


def test_fedadam_without_bias_correction_is_algorithm_2_as_written() -> None:
    # x1 = x + 0.1 m / (√v + τ) with m = 0.1 Δ1, v = 0.01 Δ1²: [1 + 0.1·0.02/0.021, 1 - 0.1·0.04/0.041].
    x1, _, _ = two_rounds("fedadam", **ADAPTIVE, bias_correction=False)

    np.testing.assert_allclose(x1["w"], [1.0952381, 0.9024390], rtol=1e-6)


def test_fedyogi_moves_v_by_the_sign_of_its_gap_to_the_squared_update() -> None:
    # t=2: v - Δ2² = [0.0004 - 0.01, 0.0016 - 0.01] < 0, so v = v + 0.01 Δ2² = [0.0005, 0.0017] (Adam's is smaller).
    x1, x2, state = two_rounds("fedyogi", **ADAPTIVE)

    np.testing.assert_allclose(x1["w"], [1.0995025, 0.9002494], rtol=1e-6)  # t=1: as Adam from v = 0
    np.testing.assert_allclose(state["v.w"], [0.0005, 0.0017], rtol=1e-5)
    np.testing.assert_allclose(x2["w"], [1.1918903, 0.8535900], rtol=1e-6)


def test_fedadagrad_sums_squared_updates_without_correcting_them() -> None:
    # v1 = Δ1², v2 = Δ1² + Δ2²; only m is bias-corrected.
    x1, x2, state = two_rounds("fedadagrad", server_lr=0.1, beta1=0.9, tau=1e-3)

    np.testing.assert_allclose(x1["w"], [1.0995025, 0.9002494], rtol=1e-6)
    np.testing.assert_allclose(state["v.w"], [0.05, 0.17], rtol=1e-5)
    np.testing.assert_allclose(x2["w"], [1.1651142, 0.8671406], rtol=1e-6)


def test_fedbuff_steps_by_its_server_learning_rate_and_weights_staleness_as_in_the_paper() -> None:
    # Nguyen et al. 2022, Algorithm 1: x <- x + eta * mean(s(tau) * delta), s(tau) = (1 + tau)^-a, a = 0.5.
    x1, x2, state = two_rounds("fedbuff", server_lr=0.5)
    np.testing.assert_allclose(x1["w"], [1.1, 0.8], rtol=1e-6)
    np.testing.assert_allclose(x2["w"], [1.15, 0.85], rtol=1e-6)
    assert state == {}
    fedbuff = StrategyConfig(name="fedbuff")
    assert [fedbuff.staleness_weight(t) for t in (0, 3, 8)] == [1.0, 0.5, pytest.approx(1 / 3)]
    assert StrategyConfig(name="fedbuff", options={"staleness_exponent": 0.0}).staleness_weight(5) == 1.0
    assert StrategyConfig(name="fedavg").staleness_weight(5) == 1.0
    assert (fedbuff.asynchronous, fedbuff.buffer_size, fedbuff.max_staleness) == (True, 5, 4)
    assert not StrategyConfig(name="fedavg").asynchronous and StrategyConfig(name="fedavg").buffer_size == 0


def test_tensors_that_are_not_floats_pass_through_every_strategy() -> None:
    for name in STRATEGIES:
        x1, _, _ = two_rounds(name)
        assert x1["count"].tolist() == [7] and x1["count"].dtype == np.int64
        assert x1["w"].dtype == np.float32


def test_the_server_steps_cover_exactly_the_registry_of_names() -> None:
    assert STRATEGY_NAMES == STRATEGIES


@pytest.mark.parametrize(
    ("data", "field", "says"),
    [
        ({"name": "fednova"}, "strategy.name", "allowed: fedavg"),
        ({"name": "fedadam", "mu": 0.1}, "strategy.mu", "not an option of fedadam"),
        ({"name": "fedprox", "mu": 0}, "strategy.mu", "(0.0, 1000.0]"),
        ({"name": "fedadam", "beta1": 1.0}, "strategy.beta1", "[0.0, 0.9999]"),
        ({"name": "fedadam", "bias_correction": "yes"}, "strategy.bias_correction", "true or false"),
        ({"name": "fedadam", "server_lr": float("nan")}, "strategy.server_lr", "number"),
        ({"name": "fedadagrad", "beta2": 0.9}, "strategy.beta2", "not an option of fedadagrad"),
        ("fedadam", "strategy", "table"),
        ({"name": "fedbuff", "buffer_size": 2.5}, "strategy.buffer_size", "whole number"),
        ({"name": "fedbuff", "buffer_size": 0}, "strategy.buffer_size", "[1, 100000]"),
        ({"name": "fedbuff", "max_staleness": -1}, "strategy.max_staleness", "[0, 100000]"),
    ],
)
def test_a_bad_strategy_is_a_config_error_naming_the_option(data: Any, field: str, says: str) -> None:
    with pytest.raises(ConfigError) as error:
        StrategyConfig.from_dict(data)

    assert error.value.field == field and says in error.value.message


def test_a_strategy_round_trips_through_its_plain_form_with_defaults_left_out() -> None:
    strategy = StrategyConfig.from_dict({"name": "fedadam", "server_lr": 0.05})

    assert StrategyConfig.from_dict(strategy.to_dict()) == strategy
    assert strategy.option("server_lr") == 0.05 and strategy.option("beta2") == 0.99
    assert StrategyConfig.from_dict({"name": "fedprox", "mu": 0.5}).proximal_mu == 0.5
    assert strategy.proximal_mu == 0.0
