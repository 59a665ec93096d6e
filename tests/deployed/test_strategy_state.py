"""A stateful strategy (FedAdam) over separate processes: its server state outlives an aggregator killed with
SIGKILL and a coordinator restart, because it is a blob named by each RoundAggregated and handed to the next
QuorumReached, never memory of one process."""

from __future__ import annotations

import asyncio

import pytest

from contracts.events import Event, QuorumReached, RoundAggregated, RunCompleted
from contracts.tensor_codec import decode_tensors
from tests.deployed.world import Deployment, of_type
from workers.learning.strategies import STEP

pytestmark = [pytest.mark.integration, pytest.mark.deployed, pytest.mark.timeout(900)]


def aggregated(round_: int):  # type: ignore[no-untyped-def]
    return lambda events: any(e.round == round_ for e in of_type(events, RoundAggregated))


async def scenario(deployment: Deployment) -> tuple[list[Event], dict[int, float]]:
    async with deployment.run_log() as log:
        await log.until(aggregated(1), what="round 1 aggregated")
        deployment.fleet["aggregator-a"].kill()  # SIGKILL: whatever it held goes back to the queue
        await log.until(aggregated(2), what="round 2 aggregated by the other aggregator")
        deployment.fleet["coordinator"].kill()
        deployment.start_coordinator("coordinator-2")
        events = await log.until(lambda e: bool(of_type(e, RunCompleted)), what="RunCompleted", within=400)
        steps = {}
        for done in of_type(events, RoundAggregated):
            state = decode_tensors(await log.event_log.get_blob(done.server_state))
            steps[done.round] = float(state[STEP][0])
    return events, steps


def test_fedadam_state_survives_an_aggregator_kill_and_a_coordinator_restart(deployment: Deployment) -> None:
    deployment.write_config(clients=2, rounds=3, strategy={"name": "fedadam", "server_lr": 0.05})
    deployment.start_coordinator()
    deployment.start_aggregator("aggregator-a")
    deployment.start_aggregator("aggregator-b")
    for i in range(2):
        deployment.start_client(f"client-{i}")

    events, steps = asyncio.run(scenario(deployment))

    assert of_type(events, RunCompleted)[0].reason == "max_rounds"
    rounds = of_type(events, RoundAggregated)
    assert [e.round for e in rounds] == [1, 2, 3]
    assert steps == {1: 1.0, 2: 2.0, 3: 3.0}  # each round took up the state the one before left
    quorums = {e.round: e.server_state for e in of_type(events, QuorumReached)}
    assert quorums[1] == "" and quorums[2] == rounds[0].server_state and quorums[3] == rounds[1].server_state
