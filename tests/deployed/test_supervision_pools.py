"""Pool workers killed under a deployed aggregator and client: their pools are replaced and the run completes.

Before a run starts, the aggregator's only pool worker is killed; after the client registered, the
client's. A broken pool used to fail every later task, so the aggregator never built the initial model
and the client never trained. The client's output also tells each round (selected, trained, uploaded).
"""

from __future__ import annotations

import asyncio
import os
import re
import signal
import time
from pathlib import Path

import pytest

from contracts.events import Event, ModelInitialized, RoundAggregated, RunCompleted
from tests.deployed.world import Deployment, of_type
from tests.support.processes import FedbusProcess

pytestmark = [pytest.mark.integration, pytest.mark.deployed, pytest.mark.timeout(900)]


def pool_workers(parent: int) -> list[int]:
    """The multiprocessing "spawn" children of `parent` (its pool; not its resource tracker)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            command = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except (FileNotFoundError, ProcessLookupError, IndexError):
            continue
        if ppid == parent and "spawn_main" in command:
            found.append(int(entry.name))
    return found


def kill_pool_worker(deployment: Deployment, process: FedbusProcess, within: float = 60.0) -> int:
    """SIGKILL the one pool worker of `process` (FEDBUS_WORKERS=1) as soon as its warm-up spawned it.

    A client registers first and spawns its pool after, so the worker may appear only a moment after the
    "registered as" line: it is waited for, not expected at once."""
    deployment.wait_for_output(process, "registered as" if process.role == "client" else "aggregator consuming")
    deadline = time.monotonic() + within
    while not (workers := pool_workers(process.pid)):
        assert process.returncode is None and time.monotonic() < deadline, process.tail()
        time.sleep(0.05)
    (worker,) = workers
    os.kill(worker, signal.SIGKILL)
    return worker


async def completed(deployment: Deployment) -> list[Event]:
    async with deployment.run_log() as log:
        return await log.until(lambda events: bool(of_type(events, RunCompleted)), what="RunCompleted")


def test_a_run_completes_after_the_pool_workers_of_its_aggregator_and_client_were_killed(
    deployment: Deployment,
) -> None:
    deployment.write_config(clients=1, rounds=1)
    deployment.start_coordinator()
    aggregator = deployment.start_aggregator("aggregator")
    killed = [kill_pool_worker(deployment, aggregator)]
    client = deployment.start_client("client-0")
    killed.append(kill_pool_worker(deployment, client))

    events = asyncio.run(completed(deployment))

    assert len(of_type(events, ModelInitialized)) == 1
    assert [e.round for e in of_type(events, RoundAggregated)] == [1]
    assert of_type(events, RunCompleted)[0].reason == "max_rounds"
    assert aggregator.returncode is None and client.returncode is None
    for process, worker in zip((aggregator, client), killed, strict=True):
        assert "the process pool is broken" in process.output(), process.tail()
        assert worker not in pool_workers(process.pid)
    rounds = client.output()
    assert re.search(r"client c-\w+: selected for round 1 \(attempt \d+\) of run-", rounds), rounds
    trained = r"client c-\w+: trained round 1 in [\d.]+ s, \d+ steps on \d+ samples \(epsilon [\d.]+\)"
    assert re.search(trained, rounds), rounds
    assert re.search(r"client c-\w+: uploaded round 1 \(\d+ bytes\)", rounds), rounds
