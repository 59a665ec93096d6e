"""A client killed while it trains: the round closes on the quorum of the others and the run completes."""

from __future__ import annotations

import asyncio

import pytest

from contracts.events import Event, QuorumReached, RoundAggregated, RoundStarted, RunCompleted, UpdateAccepted
from tests.deployed.world import Deployment, of_type

pytestmark = [pytest.mark.integration, pytest.mark.deployed]


def round_1_started(events: list[Event]) -> bool:
    return any(e.round == 1 for e in of_type(events, RoundStarted))


async def kill_when_round_1_starts(deployment: Deployment, victim: str) -> list[Event]:
    """SIGKILL the victim's process group as soon as round 1 starts; returns the run's final log."""
    async with deployment.run_log() as log:
        await log.until(round_1_started, what="round 1")
        deployment.fleet[victim].kill()
        return await log.until(lambda events: bool(of_type(events, RunCompleted)), what="RunCompleted")


def test_a_client_killed_mid_training_leaves_the_rounds_to_the_quorum_of_the_others(
    deployment: Deployment,
) -> None:
    deployment.write_config(clients=3, rounds=2, round={"quorum": 0.6})
    deployment.start_coordinator()
    deployment.start_aggregator("aggregator")
    clients = {f"client-{i}": deployment.start_client(f"client-{i}") for i in range(3)}
    ids = {name: deployment.client_id(process) for name, process in clients.items()}

    events = asyncio.run(kill_when_round_1_starts(deployment, "client-2"))

    victim = ids["client-2"]
    assert all(victim in e.selected for e in of_type(events, RoundStarted))
    accepted = {(e.round, e.client_id) for e in of_type(events, UpdateAccepted)}
    assert accepted == {(r, ids[name]) for r in (1, 2) for name in ("client-0", "client-1")}
    assert [(e.round, e.partial, len(e.update_ids)) for e in of_type(events, QuorumReached)] == [
        (1, True, 2),
        (2, True, 2),
    ]
    assert [e.round for e in of_type(events, RoundAggregated)] == [1, 2]
    assert of_type(events, RunCompleted)[0].reason == "max_rounds"
