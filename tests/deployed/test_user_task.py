"""A user's own task, outside the repository: its own nn.Module and its own per-site .npz files.

It runs embedded (`fedbus run`) and deployed (`fedbus up` on RabbitMQ and PostgreSQL) with DP on: every
healthy site's updates are accepted with its own sample count and an epsilon within the budget, the sites'
test data evaluates each model the next round starts from, a site whose folder is broken declines with
data_unavailable while the run goes on, and the final model loads into the user's module.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

from contracts.envelope import RecordedEvent
from contracts.events import ClientDeclined, Event, RunCompleted, UpdateAccepted
from contracts.streams import run_stream
from persistence.event_log_url import open_event_log
from tests.deployed.world import Deployment, of_type
from workers.learning.checkpoint import load_checkpoint

pytestmark = [pytest.mark.integration, pytest.mark.timeout(900)]

ROOT = Path(__file__).resolve().parents[2]
SITES, TRAIN, TEST, FEATURES, CLASSES = 3, 240, 80, 16, 4
EPSILON = 3.0

TASK_MODULE = """
    import torch
    from torch import nn

    from fedbus import Task, local_files


    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.body = nn.Sequential(nn.Linear({features}, 32), nn.Tanh(), nn.Linear(32, {classes}))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.body(x)


    task = Task(name="blobs", model=Net, data=lambda request: local_files(request.location))
"""


def write_project(root: Path) -> tuple[Path, Path]:
    """The task module and fedbus.toml in `root`, and `root/sites`: SITES healthy sites and a broken one."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "blobs_task.py").write_text(textwrap.dedent(TASK_MODULE.format(features=FEATURES, classes=CLASSES)))
    (root / "fedbus.toml").write_text(
        textwrap.dedent(
            f"""
            [run]
            task = "blobs_task:task"
            clients = {SITES + 1}
            rounds = 2
            compression = "int8"
            [run.privacy]
            epsilon = {EPSILON}
            [run.round]
            quorum = 0.75
            lr = 0.5
            batch_size = 32
            timeout_s = 240
            """
        )
    )
    rng = np.random.default_rng(0)
    centers = rng.normal(0, 3, (CLASSES, FEATURES))
    sites = root / "sites"
    for index in range(SITES):
        site = sites / f"site-{index}"
        site.mkdir(parents=True)
        for split, count in (("train", TRAIN), ("test", TEST)):
            y = rng.integers(0, CLASSES, count)
            x = (centers[y] + rng.normal(0, 1, (count, FEATURES))).astype(np.float32)
            np.savez(site / f"{split}.npz", x=x, y=y)
    broken = sites / "site-9-broken"  # sorted last: its samples do not fit the model
    broken.mkdir()
    np.savez(broken / "train.npz", x=np.zeros((50, FEATURES + 3), np.float32), y=np.zeros(50, int))
    return root / "fedbus.toml", sites


def user_net(root: Path) -> torch.nn.Module:
    sys.path.insert(0, str(root))
    try:
        from blobs_task import task  # type: ignore[import-not-found]

        return task.build_model(0)  # type: ignore[no-any-return]
    finally:
        sys.path.remove(str(root))
        sys.modules.pop("blobs_task", None)


def events_of(url: str, run_id: str) -> list[RecordedEvent]:
    async def read() -> list[RecordedEvent]:
        log = await open_event_log(url)
        try:
            return await log.read_stream(run_stream(run_id))
        finally:
            await log.close()

    return asyncio.run(read())


def check_run(out: Path, url: str, root: Path) -> None:
    summary = json.loads((out / "summary.json").read_text())
    assert summary["rounds"] == 2 and summary["task"] == "blobs_task:task"
    assert 0 < summary["epsilon"] <= EPSILON * (1 + 1e-6)
    events = [r.envelope.event for r in events_of(url, summary["run_id"])]
    accepted = [e for e in events if isinstance(e, UpdateAccepted)]
    assert len(accepted) == SITES * 2
    assert {e.num_samples for e in accepted} == {TRAIN}  # each site reports its own count
    assert all(e.epsilon is not None and 0 < e.epsilon <= EPSILON * (1 + 1e-6) for e in accepted)
    declined = [e for e in events if isinstance(e, ClientDeclined)]
    assert {e.reason for e in declined} == {"data_unavailable"} and {e.round for e in declined} == {1, 2}
    rows = json.loads((out / "metrics.json").read_text())
    assert rows[1]["federated_samples"] == SITES * TEST
    assert rows[1]["federated_accuracy"] > 1 / CLASSES + 0.15  # round 1's model, scored by round 2's cohort
    weights, meta = load_checkpoint(out / "model.npz")
    net = user_net(root)
    net.load_state_dict({k: torch.from_numpy(v) for k, v in weights.items()})
    assert meta["run_id"] == summary["run_id"]
    # `fedbus export` from the same log, as a torch state dict that loads into the user's own module.
    exported = out / "blobs.pt"
    done = fedbus(
        "export", summary["run_id"], "--database-url", url, "--out", str(exported),
        env={"FEDBUS_TASK_PATH": str(root)}, timeout=120,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    state = torch.load(exported, weights_only=True)
    user_net(root).load_state_dict(state)
    assert all(np.array_equal(state[k].numpy(), weights[k]) for k in weights)


def fedbus(*args: str, env: dict[str, str], timeout: float) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "services.cli.main", *args],
        cwd=ROOT,
        env={**os.environ, "OMP_NUM_THREADS": "1", **env},
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def test_a_users_task_and_sites_run_embedded_with_dp(tmp_path: Path) -> None:
    config, sites = write_project(tmp_path / "project")
    out = tmp_path / "out"

    done = fedbus("run", "--config", str(config), "--client-data", str(sites), "--out", str(out), env={}, timeout=600)

    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    check_run(out, f"sqlite:///{out / 'fedbus.db'}", tmp_path / "project")


@pytest.mark.deployed
def test_a_users_task_and_sites_run_with_fedbus_up_on_rabbitmq_and_postgresql(
    tmp_path: Path, amqp_url: str, database_url: str
) -> None:
    config, sites = write_project(tmp_path / "project")
    out = tmp_path / "out"
    env = {"FEDBUS_AMQP_URL": amqp_url, "FEDBUS_DATABASE_URL": database_url, "FEDBUS_DOWNLOAD": "0"}

    done = fedbus(
        "up", "--config", str(config), "--client-data", str(sites), "--aggregators", "1", "--out", str(out),
        env=env, timeout=800,
    )  # fmt: skip

    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-3000:]
    check_run(out, database_url, tmp_path / "project")


@pytest.mark.deployed
def test_a_site_whose_task_does_not_import_declines_each_round_and_the_others_train(
    deployment: Deployment, tmp_path: Path
) -> None:
    _, sites = write_project(tmp_path / "project")
    broken_install = tmp_path / "outdated-site"  # this site's copy of the task module fails to import
    broken_install.mkdir()
    (broken_install / "blobs_task.py").write_text("import a_module_this_site_lacks\n")
    deployment.write_config(clients=SITES, rounds=2, task="blobs_task:task", round={"quorum": 0.6, "batch_size": 32})
    deployment.fleet.env["FEDBUS_TASK_PATH"] = str(tmp_path / "project")
    deployment.start_coordinator()
    deployment.start_aggregator("aggregator-0")
    for index in range(SITES):
        extra = {"FEDBUS_TASK_PATH": str(broken_install)} if index == SITES - 1 else {}
        deployment.fleet.start(
            f"site-{index}", "client", FEDBUS_INSTANCE_NAME=f"{deployment.run_id}-site-{index}",
            FEDBUS_CLIENT_DATA=str(sites / f"site-{index}"), **extra,
        )  # fmt: skip

    async def until_done() -> list[Event]:
        async with deployment.run_log() as log:
            return await log.until(lambda events: bool(of_type(events, RunCompleted)), what="RunCompleted")

    events = asyncio.run(until_done())

    assert of_type(events, RunCompleted)[0].reason == "max_rounds"
    declined = of_type(events, ClientDeclined)
    assert [(e.round, e.reason) for e in declined] == [(1, "task_unavailable"), (2, "task_unavailable")]
    accepted = of_type(events, UpdateAccepted)
    assert len(accepted) == 2 * (SITES - 1) and declined[0].client_id not in {e.client_id for e in accepted}
    log = deployment.fleet.processes[f"site-{SITES - 1}"].output()
    assert "cannot import blobs_task: ModuleNotFoundError" in log and "Traceback" not in log
