"""`fedbus new` and the examples as a user runs them: scaffold or prepare, then `fedbus run`, DP on, and what
summary.json says. The TOML's client_data and the scaffold's refusals are checked in process."""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from contracts.errors import ConfigError
from services.cli.new_command import scaffold
from services.cli.options import add_client_data_option, add_run_options, config_from
from workers.aggregator.user_dp import first_round_epsilon

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "examples"
DATA = os.environ.get("FEDBUS_DATA_DIR", str(ROOT.parent / "shared" / "datasets"))


def python(*args: str, cwd: Path, timeout: float = 500) -> subprocess.CompletedProcess[str]:
    path = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
    env = {**os.environ, "FEDBUS_DATA_DIR": DATA, "OMP_NUM_THREADS": "1", "PYTHONPATH": path}
    env.pop("FEDBUS_TASK_PATH", None)
    return subprocess.run([sys.executable, *args], cwd=cwd, capture_output=True, text=True, env=env, timeout=timeout)


def fedbus(*args: str, cwd: Path, timeout: float = 500) -> subprocess.CompletedProcess[str]:
    return python("-m", "services.cli.main", *args, cwd=cwd, timeout=timeout)


def expect_success(done: subprocess.CompletedProcess[str]) -> None:
    """Exit status 0, or a failure showing the command's output (its progress lines included)."""
    assert done.returncode == 0, f"exit {done.returncode}\n{done.stdout[-4000:]}\n{done.stderr[-4000:]}"


def copy_example(name: str, to: Path) -> Path:
    """The example's files (not data prepared in the checkout) in a folder of the test's own."""
    return Path(shutil.copytree(EXAMPLES / name, to / name, ignore=shutil.ignore_patterns("sites", "*.npz", "__py*")))


def summary_of(out: Path) -> dict[str, Any]:
    summary: dict[str, Any] = json.loads((out / "summary.json").read_text())
    return summary


@pytest.mark.slow
@pytest.mark.timeout(900)  # three subprocesses, each with its own torch and process pool start
def test_fedbus_new_then_run_trains_the_scaffold_with_dp(tmp_path: Path) -> None:
    made = fedbus("new", "demo", cwd=tmp_path, timeout=120)
    expect_success(made)
    assert "fedbus run --config demo/fedbus.toml" in made.stdout

    done = fedbus("run", "--config", "demo/fedbus.toml", "--rounds", "2", cwd=tmp_path)  # the line

    expect_success(done)
    summary = summary_of(tmp_path / "runs" / "latest")
    assert summary["rounds"] == 2 and summary["clients"] == 3 and summary["dp"] is True
    assert 0 < summary["epsilon"] <= summary["config"]["privacy"]["epsilon"]
    assert summary["final_accuracy"] > 0.3  # 10 digits: chance is 0.1
    checked = python("-m", "pytest", "-q", "-p", "no:cacheprovider", "demo/test_task.py", cwd=tmp_path, timeout=300)
    expect_success(checked)


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_the_tabular_example_learns_the_digits_with_dp(tmp_path: Path) -> None:
    example = copy_example("tabular", tmp_path)
    prepared = python(str(example / "prepare.py"), cwd=tmp_path, timeout=120)
    expect_success(prepared)
    assert sorted(p.name for p in (example / "sites").iterdir()) == ["site-1", "site-2", "site-3"]

    done = fedbus("run", "--config", str(example / "fedbus.toml"), "--rounds", "2", "--out", "out", cwd=tmp_path)

    expect_success(done)
    summary = summary_of(tmp_path / "out")
    assert summary["rounds"] == 2 and summary["task"] == "digits_task:task" and summary["dp"] is True
    assert 0 < summary["epsilon"] <= summary["config"]["privacy"]["epsilon"] == 3.0
    assert summary["final_accuracy"] > 0.4  # chance is 0.1


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_the_fashion_mnist_example_trains_on_image_folders_with_dp(tmp_path: Path) -> None:
    example = copy_example("fashion_mnist", tmp_path)
    prepared = python(str(example / "prepare.py"), "--per-site", "300", cwd=tmp_path, timeout=120)
    expect_success(prepared)
    assert len(list((example / "sites" / "site-1" / "train").glob("*/*.png"))) == 300

    config = str(example / "fedbus.toml")
    done = fedbus("run", "--config", config, "--rounds", "2", "--local-epochs", "1", "--out", "out", cwd=tmp_path)

    expect_success(done)
    assert "declined" not in done.stdout, done.stdout
    summary = summary_of(tmp_path / "out")
    assert summary["rounds"] == 2 and summary["dp"] is True
    assert 0 < summary["epsilon"] <= 3.0
    assert summary["final_accuracy"] > 0.2  # chance is 0.1


def test_fedbus_new_refuses_a_folder_that_is_not_empty_in_one_line(tmp_path: Path) -> None:
    (tmp_path / "demo").mkdir()
    (tmp_path / "demo" / "notes.txt").write_text("mine")

    done = fedbus("new", "demo", "--dir", str(tmp_path), cwd=tmp_path, timeout=120)

    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "not an empty folder" in lines[0] and "Traceback" not in done.stderr
    assert [p.name for p in tmp_path.iterdir()] == ["demo"]  # no staging folder left behind
    assert [p.name for p in (tmp_path / "demo").iterdir()] == ["notes.txt"]


@pytest.mark.parametrize("name", ["a/b", "../up", "", "-x", "."])
def test_fedbus_new_refuses_a_name_that_is_no_plain_task_name(name: str, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="name"):
        scaffold(name, tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_fedbus_new_fills_an_empty_folder_and_creates_the_parent(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()

    scaffold("empty", tmp_path)
    root = scaffold("deep", tmp_path / "a" / "b")

    assert root == tmp_path / "a" / "b" / "deep"
    for made in (tmp_path / "empty", root):
        names = {p.relative_to(made).as_posix() for p in made.rglob("*")}
        assert {"task.py", "fedbus.toml", "README.md", "test_task.py", "heldout.npz"} <= names
        assert {f"sites/site-{n}/{split}.npz" for n in (1, 2, 3) for split in ("train", "test")} <= names
    assert 'name="deep"' in (root / "task.py").read_text()
    assert "$" not in (root / "fedbus.toml").read_text() + (root / "README.md").read_text()


def _args(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_run_options(parser)
    add_client_data_option(parser)
    return parser.parse_args(argv)


def test_the_config_files_client_data_is_relative_to_it_and_the_flag_overrides_it(tmp_path: Path) -> None:
    config = tmp_path / "project" / "fedbus.toml"
    config.parent.mkdir()
    config.write_text('client_data = "sites"\n[run]\nclients = 3\n')

    from_file = _args("--config", str(config))
    run = config_from(from_file)
    from_flag = _args("--config", str(config), "--client-data", "elsewhere")
    config_from(from_flag)

    assert run.clients == 3 and from_file.client_data == tmp_path / "project" / "sites"
    assert from_flag.client_data == Path("elsewhere")


def test_client_data_in_a_file_without_a_run_table_and_its_errors(tmp_path: Path) -> None:
    config = tmp_path / "fedbus.toml"
    config.write_text('client_data = "/data/sites"\nrounds = 2\n')
    args = _args("--config", str(config))
    assert config_from(args).rounds == 2 and args.client_data == Path("/data/sites")

    for text, message in [
        ('client_data = "a"\n[run]\nclient_data = "b"\n', "both"),
        ("client_data = 3\n", "must be a folder path"),
    ]:
        config.write_text(text)
        with pytest.raises(ConfigError, match=message) as raised:
            config_from(_args("--config", str(config)))
        assert raised.value.field == "client_data"


@pytest.mark.parametrize("path", sorted(EXAMPLES.glob("**/*.toml")), ids=lambda p: str(p.relative_to(EXAMPLES)))
def test_every_example_config_builds_a_run_config_as_fedbus_run_reads_it(path: Path) -> None:
    config = config_from(_args("--config", str(path)))

    assert config.rounds >= 1


def test_the_user_dp_example_runs_user_level_dp_within_its_budget() -> None:
    config = config_from(_args("--config", str(EXAMPLES / "user_dp.toml")))

    dp = config.user_privacy
    assert dp.enabled and dp.sample_rate < 1 and config.privacy.enabled
    assert dp.epsilon is not None and not dp.exceeded_by(first_round_epsilon(config))  # the aggregator starts it


def test_the_user_dp_flag_switches_user_level_dp_on_and_small_federations_are_told_what_to_change() -> None:
    assert config_from(_args("--user-dp", "--clients", "1000")).user_privacy.enabled

    with pytest.raises(ConfigError) as raised:
        config_from(_args("--user-dp"))  # 10 clients: the default count noise leaves the sum no share of z

    assert raised.value.field == "user_privacy.noise_multiplier" and "clip_count_stddev" in raised.value.message
