"""RunConfig validation: errors name the field and the allowed range."""

from __future__ import annotations

import pytest

from contracts.catalog import MODELS, check_task
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
        ({"task": "not a name"}, "task", "package.module:attribute"),
        ({"task": "pkg.mod:"}, "task", "package.module:attribute"),
        ({"task": 7}, "task", "string"),
        ({"init_model": "abc"}, "init_model", "sha256"),
        ({"model": "mnist_cnn", "dataset": "cifar10"}, "model", "does not train on"),
        ({"privacy": 3}, "privacy", "table"),
    ],
)
def test_invalid_values_name_the_field(data: dict[str, object], field: str, says: str) -> None:
    with pytest.raises(ConfigError) as error:
        RunConfig.from_dict(data)

    assert error.value.field == field and says in str(error.value)


def test_dp_off_skips_the_privacy_ranges() -> None:
    assert RunConfig.from_dict({"privacy": {"enabled": False, "epsilon": 0}}).privacy.enabled is False


def test_an_unregistered_task_name_is_refused_where_tasks_are_checked() -> None:
    RunConfig(task="nope")  # a well-spelled name: whether it exists is for where it is loaded

    with pytest.raises(ConfigError) as error:
        check_task("nope")

    assert error.value.field == "task"
    assert "'nope'" in error.value.message
    assert all(name in error.value.message for name in MODELS)
    check_task("my_pkg.tasks:digits")  # a module path is imported where the task is loaded


@pytest.mark.parametrize("task", MODELS)
def test_every_builtin_task_builds_a_config_and_is_registered(task: str) -> None:
    config = RunConfig(task=task)

    assert RunConfig.from_dict(config.to_dict()) == config
    check_task(task)


def test_a_config_written_before_tasks_reads_as_the_builtin_task_of_its_model() -> None:
    old = {"model": "mnist_cnn", "dataset": "mnist", "rounds": 3}

    assert RunConfig.from_dict(old) == RunConfig(task="mnist_cnn", rounds=3)
