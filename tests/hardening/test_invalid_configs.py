"""Random run configurations: RunConfig.from_dict either builds one or raises ConfigError naming the field,
never another exception; and `fedbus run` with invalid flags exits 2 with one line on stderr."""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from contracts.capability import PlansConfig
from contracts.config import PrivacyConfig, RoundConfig, RunConfig
from contracts.errors import ConfigError
from contracts.strategy import OPTIONS
from contracts.user_privacy import UserPrivacyConfig
from tests.hardening.tally import Tally

ROOT = Path(__file__).resolve().parents[2]
TALLY = Tally("invalid_configs")
TOP = sorted(
    f.name
    for f in dataclasses.fields(RunConfig)
    if f.name not in ("privacy", "round", "strategy", "user_privacy", "plans")
)
SECTIONS = {"privacy": PrivacyConfig, "round": RoundConfig, "user_privacy": UserPrivacyConfig, "plans": PlansConfig}
STRATEGY_FIELDS = {"strategy", "strategy.name"} | {f"strategy.{o}" for options in OPTIONS.values() for o in options}
KNOWN = (
    set(TOP)
    | {f"{s}.{f.name}" for s, cls in SECTIONS.items() for f in dataclasses.fields(cls)}
    | set(SECTIONS)
    | STRATEGY_FIELDS
)

values = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.integers(min_value=-10, max_value=100),
    st.floats(),
    st.floats(min_value=0, max_value=1),
    st.text(max_size=12),
    st.sampled_from(["mnist", "cifar10", "iid", "int8", "topk:0.1", "fedavg", "krum", "mnist_dp_cnn"]),
    st.lists(st.integers(), max_size=3),
    st.dictionaries(st.text(max_size=4), st.integers(), max_size=2),
)


def section(cls: type[Any]) -> st.SearchStrategy[Any]:
    names = [f.name for f in dataclasses.fields(cls)]
    keys = st.sampled_from(names) | st.text(max_size=10)
    return st.dictionaries(keys, values, max_size=4) | values


configs = st.dictionaries(
    st.sampled_from(TOP) | st.text(max_size=10),
    values,
    max_size=5,
).flatmap(
    lambda top: st.fixed_dictionaries({}, optional={name: section(cls) for name, cls in SECTIONS.items()}).map(
        lambda sections: {**top, **sections}
    )
)


@settings(max_examples=400, deadline=None)
@given(data=configs)
def test_any_plain_data_builds_a_config_or_raises_config_error_naming_the_field(data: dict[str, Any]) -> None:
    try:
        config = RunConfig.from_dict(data)
    except ConfigError as error:
        TALLY.add("random_dict", "ConfigError")
        unknown_key = any(error.field == f"{p}{k}" for p, d in _tables(data) for k in d if isinstance(k, str))
        assert error.field in KNOWN or error.field == "config" or unknown_key, error.field
        assert str(error).startswith(f"{error.field}: ") and error.message
        return
    TALLY.add("random_dict", "accepted")
    assert RunConfig.from_dict(config.to_dict()) == config


def _tables(data: dict[str, Any]) -> list[tuple[str, dict[Any, Any]]]:
    tables: list[tuple[str, dict[Any, Any]]] = [("", data)]
    tables += [(f"{name}.", data[name]) for name in (*SECTIONS, "strategy") if isinstance(data.get(name), dict)]
    return tables


def test_zz_write_the_tally() -> None:
    print("\n" + TALLY.table())
    assert TALLY.write().exists()


def test_the_cli_refuses_invalid_flags_with_exit_2_and_one_line(tmp_path: Path) -> None:
    env = {**os.environ, "FEDBUS_DATA_DIR": "/work/shared/datasets", "OMP_NUM_THREADS": "1"}
    answers = []
    cases = [
        ["--clients", "many"],
        ["--clients", "3", "--quorum", "7", "--compression", "zip"],
        ["--task", "nope"],
        ["--device", "tpu"],
    ]
    if not torch.cuda.is_available():
        cases.append(["--device", "cuda"])
    for flags in cases:
        answers.append(
            subprocess.run(
                [sys.executable, "-m", "services.cli.main", "run", *flags, "--out", str(tmp_path)],
                cwd=ROOT,
                env=env,
                capture_output=True,
                text=True,
                timeout=120,
            )
        )

    for answer in answers:
        assert answer.returncode == 2, answer.stderr
        assert len(answer.stderr.strip().splitlines()) == 1, answer.stderr
        assert "Traceback" not in answer.stderr
    assert "--clients" in answers[0].stderr
    assert "quorum" in answers[1].stderr or "compression" in answers[1].stderr
    assert "task" in answers[2].stderr and "mnist_dp_cnn" in answers[2].stderr
    assert all("device" in answer.stderr for answer in answers[3:])
    assert all("no CUDA GPU" in answer.stderr for answer in answers[4:])


def test_the_coordinator_refuses_a_run_config_file_with_a_misspelled_task_with_one_line(tmp_path: Path) -> None:
    run_file = tmp_path / "run.toml"
    run_file.write_text('[run]\ntask = "no such task"\n')
    env = {**os.environ, "FEDBUS_RUN_CONFIG": str(run_file), "OMP_NUM_THREADS": "1"}

    answer = subprocess.run(
        [sys.executable, "-m", "services.cli.main", "coordinator"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )

    assert answer.returncode == 2, answer.stderr
    line = "fedbus coordinator: error: task: 'no such task' is neither a task name nor package.module:attribute"
    assert answer.stderr.strip().splitlines() == [line]
