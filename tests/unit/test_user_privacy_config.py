"""`[run.user_privacy]`: validated once, errors naming the field; off by default and absent from old configs."""

from __future__ import annotations

from typing import Any

import pytest

from contracts.config import RunConfig
from contracts.errors import ConfigError
from contracts.user_privacy import UserPrivacyConfig

ON: dict[str, Any] = {"enabled": True, "sample_rate": 0.5, "clip_count_stddev": 2.0}


def test_a_config_with_user_privacy_round_trips_through_plain_data() -> None:
    config = RunConfig.from_dict({"clients": 30, "user_privacy": {**ON, "epsilon": 8.0, "target_quantile": 0.7}})

    assert RunConfig.from_dict(config.to_dict()) == config
    assert config.user_privacy.epsilon == 8.0 and config.user_privacy.target_quantile == 0.7


def test_a_config_written_before_user_privacy_decodes_with_it_off() -> None:
    old = RunConfig().to_dict()
    del old["user_privacy"]

    assert RunConfig.from_dict(old).user_privacy == UserPrivacyConfig(enabled=False)


@pytest.mark.parametrize(
    ("data", "field", "says"),
    [
        ({"user_privacy": {"noise_multiplier": 0}}, "user_privacy.noise_multiplier", "(0.0, 1000.0]"),
        ({"user_privacy": {"clip_norm": -1}}, "user_privacy.clip_norm", "(0.0, 1000000000.0]"),
        ({"user_privacy": {"sample_rate": 1.5}}, "user_privacy.sample_rate", "(0.0, 1.0]"),
        ({"user_privacy": {"target_quantile": 2}}, "user_privacy.target_quantile", "[0.0, 1.0]"),
        ({"user_privacy": {"clip_lr": 0}}, "user_privacy.clip_lr", "(0.0, 10.0]"),
        ({"user_privacy": {"delta": 0.5}}, "user_privacy.delta", "(0.0, 0.1]"),
        ({"user_privacy": {"epsilon": 0}}, "user_privacy.epsilon", "(0.0, 1000.0]"),
        ({"user_privacy": {"clip_count_stddev": 0}}, "user_privacy.clip_count_stddev", "(0.0, 1000000000.0]"),
        ({"user_privacy": {"enabled": "yes"}}, "user_privacy.enabled", "true or false"),
        ({"user_privacy": {"adaptive": 1}}, "user_privacy.adaptive", "true or false"),
        ({"user_privacy": {"colour": 1}}, "user_privacy.colour", "unknown option"),
        ({"user_privacy": 3}, "user_privacy", "table"),
    ],
)
def test_invalid_values_name_the_field(data: dict[str, Any], field: str, says: str) -> None:
    with pytest.raises(ConfigError) as error:
        RunConfig.from_dict(data)

    assert error.value.field == field and says in error.value.message


@pytest.mark.parametrize(
    ("round_", "field", "says"),
    [
        ({"aggregator": "median"}, "round.aggregator", "must be fedavg"),
        ({"aggregator": "krum", "min_updates": 3}, "round.aggregator", "must be fedavg"),
        ({"clip_norm": 1.0}, "round.clip_norm", "user_privacy.clip_norm clips"),
        ({"clients_per_round": 0.5}, "round.clients_per_round", "sample_rate"),
    ],
)
def test_round_options_that_break_the_proof_are_refused_with_user_privacy_on(
    round_: dict[str, Any], field: str, says: str
) -> None:
    RunConfig.from_dict({"clients": 30, "round": round_})  # fine without user-level DP

    with pytest.raises(ConfigError) as error:
        RunConfig.from_dict({"clients": 30, "round": round_, "user_privacy": ON})

    assert error.value.field == field and says in error.value.message


def test_too_few_clients_for_the_default_count_noise_is_refused_naming_the_noise_multiplier() -> None:
    # sigma_b = q clients / 20 = 0.25 for 10 clients at q = 0.5: z = 1 needs 2 sigma_b > 1
    with pytest.raises(ConfigError) as error:
        RunConfig.from_dict({"clients": 10, "user_privacy": {"enabled": True, "sample_rate": 0.5}})

    assert error.value.field == "user_privacy.noise_multiplier" and "clip_count_stddev" in error.value.message
    RunConfig.from_dict({"clients": 10, "user_privacy": {"enabled": True, "sample_rate": 0.5, "adaptive": False}})
    RunConfig.from_dict({"clients": 1000, "user_privacy": {"enabled": True, "sample_rate": 0.5}})


def test_the_budget_is_exceeded_only_past_the_accountants_float_noise() -> None:
    dp = UserPrivacyConfig(epsilon=4.0)

    assert not dp.exceeded_by(4.0 * (1 + 1e-9)) and dp.exceeded_by(4.01)
    assert not UserPrivacyConfig().exceeded_by(1e6)  # no budget, nothing to exceed


def test_fedbuff_is_refused_with_user_privacy_on_its_buffers_are_no_uniform_sample() -> None:
    RunConfig.from_dict({"clients": 30, "strategy": {"name": "fedbuff"}})  # fine without user-level DP

    with pytest.raises(ConfigError) as error:
        RunConfig.from_dict({"clients": 30, "strategy": {"name": "fedbuff"}, "user_privacy": ON})

    assert error.value.field == "strategy.name" and "synchronous" in error.value.message
