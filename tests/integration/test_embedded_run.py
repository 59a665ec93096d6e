"""`fedbus run` end to end on an MNIST subset: real gRPC, SQLite log, in-memory broker, process pool."""

from __future__ import annotations

import json
import math
import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

DATA = os.environ.get("FEDBUS_DATA_DIR", str(Path(__file__).resolve().parents[3] / "shared" / "datasets"))


def fedbus(*args: str, timeout: float = 600, **extra_env: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "FEDBUS_DATA_DIR": DATA, "OMP_NUM_THREADS": "1", **extra_env}
    return subprocess.run(
        [sys.executable, "-m", "services.cli.main", *args], capture_output=True, text=True, env=env, timeout=timeout
    )


@pytest.mark.slow
def test_three_clients_two_rounds_with_dp_accuracy_rises(tmp_path: Path) -> None:
    out = tmp_path / "run"

    done = fedbus(
        "run", "--clients", "3", "--rounds", "2", "--train-limit", "3000", "--eval-limit", "1000",
        "--lr", "0.5", "--epsilon", "3", "--out", str(out),
    )  # fmt: skip

    assert done.returncode == 0, done.stderr
    summary = json.loads((out / "summary.json").read_text())
    rounds = json.loads((out / "metrics.json").read_text())
    assert summary["rounds"] == 2 and summary["clients"] == 3
    assert 0 < summary["epsilon"] <= 3.0 and summary["delta"] == 1e-5
    assert rounds[1]["accuracy"] > rounds[0]["accuracy"] > 0.15
    assert summary["final_accuracy"] == rounds[-1]["accuracy"]
    for name in ("fedbus.db", "model.npz", "metrics.csv", "accuracy_epsilon.png"):
        assert (out / name).stat().st_size > 0, name


@pytest.mark.parametrize(
    ("args", "field"),
    [
        (["--clients", "0"], "clients"),
        (["--epsilon", "-1"], "privacy.epsilon"),
        (["--quorum", "1.5"], "round.quorum"),
        (["--partition", "zipf"], "partition"),
        (["--compression", "gzip"], "compression"),
        (["--task", "resnet"], "task"),
        (["--task", "no_such_module:task"], "no_such_module"),
    ],
)
def test_an_invalid_option_is_one_line_naming_the_field_with_status_2(
    args: list[str], field: str, tmp_path: Path
) -> None:
    done = fedbus("run", *args, "--out", str(tmp_path), timeout=120)

    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and field in lines[0] and "Traceback" not in done.stderr


def test_a_bad_config_file_names_the_key(tmp_path: Path) -> None:
    config = tmp_path / "run.toml"
    config.write_text("[run]\nclients = 4\n[run.round]\nquorom = 0.5\n")

    done = fedbus("run", "--config", str(config), "--out", str(tmp_path), timeout=120)

    assert done.returncode == 2 and "round.quorom" in done.stderr


def test_missing_data_says_where_it_looked(tmp_path: Path) -> None:
    env_dir = tmp_path / "empty"
    env_dir.mkdir()

    done = fedbus(
        "run", "--data-dir", str(env_dir), "--out", str(tmp_path / "o"), timeout=120,
        FEDBUS_DOWNLOAD="0", FEDBUS_CACHE_DIR=str(tmp_path / "cache"),
    )  # fmt: skip

    assert done.returncode == 2
    assert str(env_dir) in done.stderr and "FEDBUS_DATA_DIR" in done.stderr and "Traceback" not in done.stderr


@pytest.mark.slow
def test_run_serve_exposes_the_api_on_the_live_sqlite_log(tmp_path: Path) -> None:
    import socket
    import time
    import urllib.request

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "FEDBUS_DATA_DIR": DATA, "OMP_NUM_THREADS": "1"}
    args = ["run", "--clients", "2", "--rounds", "2", "--train-limit", "1200", "--eval-limit", "300", "--no-dp",
            "--serve", str(port), "--out", str(tmp_path / "run")]  # fmt: skip
    process = subprocess.Popen([sys.executable, "-m", "services.cli.main", *args], env=env, stderr=subprocess.PIPE)
    runs: list[dict[str, object]] = []
    try:
        deadline = time.monotonic() + 300
        while not runs and process.poll() is None and time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/v1/runs", timeout=2) as reply:
                    runs = json.loads(reply.read())["runs"]
            except OSError:
                time.sleep(0.2)
        _, stderr = process.communicate(timeout=300)
    finally:
        process.kill()

    assert runs and runs[0]["run_id"].startswith("run-"), stderr  # type: ignore[union-attr]
    assert process.returncode == 0, stderr


USER_DP_TOML = """
[run]
clients = 4
rounds = 2
train_limit = 2000
eval_limit = 500

[run.round]
lr = 0.5

[run.user_privacy]
enabled = true
noise_multiplier = 0.8
clip_norm = 0.5
clip_count_stddev = 1.0
sample_rate = 1.0
"""


def test_a_run_with_user_level_dp_reports_both_privacy_levels(tmp_path: Path) -> None:
    config, out = tmp_path / "user_dp.toml", tmp_path / "run"
    config.write_text(USER_DP_TOML)

    done = fedbus("run", "--config", str(config), "--out", str(out), timeout=300)

    assert done.returncode == 0, done.stderr
    summary = json.loads((out / "summary.json").read_text())
    rounds = json.loads((out / "metrics.json").read_text())
    assert summary["rounds"] == 2 and summary["user_dp"] is True and summary["dp"] is True
    user, record = summary["privacy"]["user_level"], summary["privacy"]["record_level"]
    assert 0 < rounds[0]["user_epsilon"] < rounds[1]["user_epsilon"] == summary["user_epsilon"] == user["epsilon"]
    assert user["amplified"] is True and user["delta"] == 1e-5 and summary["privacy"]["accountant"] == "rdp"
    assert 0 < record["epsilon"] <= 3.0  # the clients' DP-SGD is reported as before
    assert rounds[0]["user_clip_norm"] == 0.5 and rounds[1]["user_clip_norm"] != 0.5  # adaptive clipping moved it


FEDBUFF_TOML = """
[run]
clients = 4
rounds = 4
train_limit = 2000
eval_limit = 500

[run.round]
lr = 0.5

[run.privacy]
epsilon = 3.0

[run.strategy]
name = "fedbuff"
buffer_size = 2
"""


def test_a_fedbuff_run_aggregates_every_update_once_with_its_staleness(tmp_path: Path) -> None:
    config, out = tmp_path / "fedbuff.toml", tmp_path / "run"
    config.write_text(FEDBUFF_TOML)

    done = fedbus("run", "--config", str(config), "--out", str(out), timeout=300)

    assert done.returncode == 0, done.stderr
    summary = json.loads((out / "summary.json").read_text())
    rounds = json.loads((out / "metrics.json").read_text())
    assert summary["rounds"] == 4 and 0 < summary["epsilon"] <= 3.0
    assert rounds[-1]["accuracy"] > 0.15
    with sqlite3.connect(out / "fedbus.db") as db:
        rows = db.execute("SELECT type, payload FROM events ORDER BY position").fetchall()
    events = [(kind, json.loads(payload)) for kind, payload in rows]
    done_attempts = {(p["round"], p["attempt"]) for kind, p in events if kind == "RoundAggregated"}
    quorums = [p for kind, p in events if kind == "QuorumReached" and (p["round"], p["attempt"]) in done_attempts]
    assert [q["round"] for q in quorums] == [1, 2, 3, 4]
    assert all(len(q["update_ids"]) == 2 for q in quorums)  # the buffer, not the cohort of 4
    aggregated = [u for q in quorums for u in q["update_ids"]]
    assert len(aggregated) == len(set(aggregated))  # no update counted twice
    # Four clients trained on version 0 and the first buffer took two: the other two count, staleness-weighted.
    assert quorums[0]["staleness"] == [0, 0] and any(s > 0 for q in quorums[1:] for s in q["staleness"])


def test_the_heterogeneous_example_plans_each_measured_clients_steps_and_codec(tmp_path: Path) -> None:
    out = tmp_path / "run"

    example = Path(__file__).parents[2] / "examples" / "heterogeneous.toml"
    done = fedbus("run", "--config", str(example), "--out", str(out), timeout=300)

    assert done.returncode == 0, done.stderr
    summary = json.loads((out / "summary.json").read_text())
    assert summary["rounds"] == 3 and 0 < summary["epsilon"] <= 3.0
    with sqlite3.connect(out / "fedbus.db") as db:
        rows = db.execute("SELECT type, payload FROM events ORDER BY position").fetchall()
    events = [(kind, json.loads(payload)) for kind, payload in rows]
    started = {p["round"]: p for kind, p in events if kind == "RoundStarted"}
    accepted = {(p["round"], p["client_id"]): p for kind, p in events if kind == "UpdateAccepted"}
    assert set(started[1]["plans"]) == set(started[1]["selected"])  # nobody measured yet: the run's plan
    assert {p["max_steps"] for p in started[1]["plans"].values()} == {None}
    for round_ in (2, 3):
        for client, plan in started[round_]["plans"].items():
            update = accepted.get((round_, client))
            if update is None:
                continue  # cut off by the quorum: nothing to compare
            full = math.ceil(update["num_samples"] / 64)  # one local epoch at batch 64: the run's plan
            assert update["metrics"]["steps"] == (plan["max_steps"] or full)
            assert update["codec"] == plan["compression"] in ("int8", "topk:0.1+int8")
            assert plan["max_steps"] is None or full / 4 <= plan["max_steps"] < full
    # the median target is met by half the clients at most: someone's work was cut
    assert any(p["max_steps"] is not None for r in (2, 3) for p in started[r]["plans"].values())
