"""The round's training plan: one wire shape, decoded once, every malformation a CodecError naming the field."""

from __future__ import annotations

import re
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from contracts.catalog import MODELS
from contracts.config import PrivacyConfig, RoundConfig, RunConfig
from contracts.envelope import Envelope
from contracts.errors import CodecError
from contracts.event_codec import decode_envelope, encode_envelope
from contracts.events import RoundStarted
from contracts.train_plan import TrainPlan, plan_for

# What the coordinator puts in RoundStarted.train.
LOGGED = {
    "task": "mnist_dp_cnn", "partition": "dirichlet:0.5", "seed": 7,
    "rounds": 20, "epochs": 2, "batch_size": 32, "lr": 0.05, "momentum": 0.9, "compression": "topk:0.1+int8",
    "train_limit": 1000, "proximal_mu": 0.0,
    "privacy": {"enabled": True, "epsilon": 3.0, "delta": 1e-05, "max_grad_norm": 1.0, "accountant": "rdp"},
}  # fmt: skip
# What it put there before tasks (logs hold this shape): the model and data set of a built-in.
BEFORE_TASKS = {
    "model": "mnist_dp_cnn", "dataset": "mnist",
    **{k: v for k, v in LOGGED.items() if k not in ("task", "proximal_mu")},
    "privacy": {"enabled": True, "epsilon": 3.0, "delta": 1e-05, "max_grad_norm": 1.0},
    "partition_count": 4,
}  # fmt: skip
# What it put there while the coordinator handed out simulated shares: their count (ignored now).
BEFORE_SHARES_WERE_THE_CLIENTS = {**LOGGED, "partition_count": 4}
CONFIG = RunConfig(
    task="mnist_dp_cnn", partition="dirichlet:0.5", seed=7, rounds=20, clients=4,
    compression="topk:0.1+int8", train_limit=1000,
    privacy=PrivacyConfig(enabled=True, epsilon=3.0, delta=1e-5, max_grad_norm=1.0),
    round=RoundConfig(local_epochs=2, batch_size=32, lr=0.05, momentum=0.9),
)  # fmt: skip

privacy_configs = st.builds(
    PrivacyConfig,
    enabled=st.booleans(),
    epsilon=st.floats(0, 1000, exclude_min=True),
    delta=st.floats(0, 0.1, exclude_min=True),
    max_grad_norm=st.floats(0, 1e6, exclude_min=True),
)
round_configs = st.builds(
    RoundConfig,
    local_epochs=st.integers(1, 1000),
    batch_size=st.integers(1, 65_536),
    lr=st.floats(0, 100, exclude_min=True),
    momentum=st.floats(0, 0.999),
)
compressions = st.one_of(
    st.sampled_from(["none", "fp32", "fp16", "int8"]),
    st.builds(
        lambda f, q: f"topk:{f!r}{q}", st.floats(0, 1, exclude_min=True), st.sampled_from(["", "+int8", "+fp16"])
    ),
)
run_configs = st.sampled_from([*MODELS, "my_pkg.tasks:digits"]).flatmap(
    lambda task: st.builds(
        RunConfig,
        task=st.just(task),
        partition=st.sampled_from(["iid", "dirichlet:0.5", "shards:2"]),
        clients=st.integers(1, 100),
        rounds=st.integers(1, 100_000),
        seed=st.integers(0, 2**31 - 1),
        compression=compressions,
        train_limit=st.none() | st.integers(100, 10_000_000),
        privacy=privacy_configs,
        round=round_configs,
    )
)

DROP = object()


def logged(**changes: Any) -> dict[str, Any]:
    """LOGGED with top-level changes; a change to ``privacy`` is merged into its map (None drops a key)."""
    data = {**LOGGED, "privacy": dict(LOGGED["privacy"])}
    for key, value in changes.items():
        target, name = (data["privacy"], key.removeprefix("privacy_")) if key.startswith("privacy_") else (data, key)
        if value is DROP:
            del target[name]
        else:
            target[name] = value
    return data


@given(run_configs)
def test_a_plan_survives_its_plain_form_and_the_wire(config: RunConfig) -> None:
    plan = plan_for(config)
    event = RoundStarted(
        run_id="r", round=1, attempt=1, model_version=0, model_digest="d", selected=("c",), deadline=1.0,
        train=plan.to_dict(),
    )  # fmt: skip

    received = decode_envelope(encode_envelope(Envelope(event=event))).event

    assert isinstance(received, RoundStarted)
    assert TrainPlan.from_dict(plan.to_dict()) == plan
    assert TrainPlan.from_dict(received.train) == plan


def test_the_plain_form_is_the_shape_logs_already_hold() -> None:
    plan = plan_for(CONFIG)

    assert plan.to_dict() == LOGGED
    assert list(plan.to_dict()) == list(LOGGED) and list(plan.to_dict()["privacy"]) == list(LOGGED["privacy"])
    assert TrainPlan.from_dict(LOGGED) == plan
    assert TrainPlan.from_dict(BEFORE_TASKS) == plan
    assert TrainPlan.from_dict(BEFORE_SHARES_WERE_THE_CLIENTS) == plan


def test_a_plan_takes_each_value_from_the_run_config() -> None:
    plan = plan_for(CONFIG)

    assert (plan.epochs, plan.batch_size, plan.lr, plan.momentum) == (2, 32, 0.05, 0.9)
    assert (plan.privacy.epsilon, plan.privacy.delta, plan.partition, plan.train_limit) == (
        3.0,
        1e-5,
        "dirichlet:0.5",
        1000,
    )


def test_an_integer_where_a_float_goes_decodes_as_a_float() -> None:
    plan = TrainPlan.from_dict(logged(lr=1, privacy_epsilon=3))

    assert type(plan.lr) is float and type(plan.privacy.epsilon) is float and plan.lr == 1.0


def test_dp_off_skips_the_budget_ranges_as_the_run_config_does() -> None:
    plan = TrainPlan.from_dict(logged(privacy_enabled=False, privacy_epsilon=0.0, privacy_delta=0.0))

    assert plan.privacy.enabled is False


@pytest.mark.parametrize(
    ("changes", "field", "says"),
    [
        # the shape
        ({"seed": DROP}, "train.seed", "missing"),
        ({"colour": "red"}, "train.colour", "unknown field"),
        ({"privacy_delta": DROP}, "train.privacy.delta", "missing"),
        ({"privacy_colour": 1}, "train.privacy.colour", "unknown field"),
        ({"privacy": 3}, "train.privacy", "map"),
        # the types
        ({"batch_size": True}, "train.batch_size", "integer"),
        ({"batch_size": "64"}, "train.batch_size", "integer"),
        ({"epochs": 1.0}, "train.epochs", "integer"),
        ({"lr": "0.1"}, "train.lr", "number"),
        ({"momentum": False}, "train.momentum", "number"),
        ({"lr": 10**400}, "train.lr", "float"),
        ({"task": 3}, "train.task", "string"),
        ({"proximal_mu": -1.0}, "train.proximal_mu", "(0.0, 1000.0]"),
        ({"proximal_mu": "0.1"}, "train.proximal_mu", "number"),
        ({"task": "no such task"}, "train.task", "package.module:attribute"),
        ({"compression": None}, "train.compression", "string"),
        ({"train_limit": "1000"}, "train.train_limit", "integer or null"),
        ({"privacy_enabled": "yes"}, "train.privacy.enabled", "true or false"),
        ({"privacy_max_grad_norm": None}, "train.privacy.max_grad_norm", "number"),
        # the ranges, as RunConfig has them
        ({"batch_size": 0}, "train.batch_size", "[1, 65536]"),
        ({"epochs": 0}, "train.epochs", "[1, 1000]"),
        ({"lr": 0.0}, "train.lr", "(0.0, 100.0]"),
        ({"momentum": 1.0}, "train.momentum", "[0.0, 0.999]"),
        ({"rounds": 0}, "train.rounds", "[1, 100000]"),
        ({"seed": -1}, "train.seed", "[0, 2147483647]"),
        ({"train_limit": 0}, "train.train_limit", "[1, 10000000]"),
        ({"compression": "gzip"}, "train.compression", "allowed"),
        ({"privacy_epsilon": 0.0}, "train.privacy.epsilon", "(0.0, 1000.0]"),
        ({"privacy_delta": 0.5}, "train.privacy.delta", "(0.0, 0.1]"),
        ({"privacy_max_grad_norm": float("nan")}, "train.privacy.max_grad_norm", "number"),
    ],
)
def test_a_malformed_plan_is_a_codec_error_naming_the_field(changes: dict[str, Any], field: str, says: str) -> None:
    with pytest.raises(CodecError, match=rf"^{re.escape(field)}: ") as error:
        TrainPlan.from_dict(logged(**changes))

    assert says in str(error.value)


def test_a_plan_that_is_no_map_is_a_codec_error() -> None:
    with pytest.raises(CodecError, match=r"^train: must be a map"):
        TrainPlan.from_dict([1, 2])  # type: ignore[arg-type]
