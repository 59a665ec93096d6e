"""RunConfig validation: errors name the field and the allowed range."""

from __future__ import annotations

import pytest

from contracts.catalog import MODELS
from contracts.config import RunConfig
from contracts.errors import ConfigError


def test_round_trip_through_plain_data() -> None:
    config = RunConfig(clients=7, compression="topk:0.1+int8")

    assert RunConfig.from_dict(config.to_dict()) == config


@pytest.mark.parametrize(
    ("data", "field", "says"),
    [
        ({"clients": 0}, "clients", "[1, 100000]"),
        ({"privacy": {"epsilon": 0}}, "privacy.epsilon", "(0.0, 1000.0]"),
        ({"privacy": {"delta": 0.5}}, "privacy.delta", "(0.0, 0.1]"),
        ({"round": {"quorum": 0}}, "round.quorum", "(0.0, 1.0]"),
        ({"round": {"batch_size": "64"}}, "round.batch_size", "integer"),
        ({"round": {"colour": 1}}, "round.colour", "unknown option"),
        ({"compression": "gzip"}, "compression", "allowed"),
        ({"dataset": "imagenet"}, "dataset", "mnist, cifar10"),
        ({"model": "nope"}, "model", "mnist_dp_cnn, mnist_cnn, cifar10_cnn"),
        ({"model": "mnist_cnn", "dataset": "cifar10"}, "model", "trains on mnist"),
        ({"privacy": 3}, "privacy", "table"),
    ],
)
def test_invalid_values_name_the_field(data: dict[str, object], field: str, says: str) -> None:
    with pytest.raises(ConfigError) as error:
        RunConfig.from_dict(data)

    assert error.value.field == field and says in str(error.value)


def test_dp_off_skips_the_privacy_ranges() -> None:
    assert RunConfig.from_dict({"privacy": {"enabled": False, "epsilon": 0}}).privacy.enabled is False


def test_an_unknown_model_is_refused_where_the_config_is_built() -> None:
    with pytest.raises(ConfigError) as error:
        RunConfig(model="nope")

    assert error.value.field == "model"
    assert "'nope'" in error.value.message
    assert all(name in error.value.message for name in MODELS)


@pytest.mark.parametrize("model", MODELS)
def test_every_model_builds_a_config_with_its_own_dataset(model: str) -> None:
    config = RunConfig(model=model, dataset=MODELS[model])

    assert RunConfig.from_dict(config.to_dict()) == config
