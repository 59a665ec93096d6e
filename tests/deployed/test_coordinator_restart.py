"""A coordinator killed mid-run and started again: it rebuilds the run from the log and finishes it.

The new process has the same settings (run id, token secret), so it continues the run instead of
creating one, and the clients' signed tokens stay valid: they keep training without registering again.
"""

from __future__ import annotations

import asyncio

import pytest

from contracts.events import Event, QuorumReached, RoundAggregated, RoundStarted, RunCompleted, UpdateAccepted
from tests.deployed.world import Deployment, of_type

pytestmark = [pytest.mark.integration, pytest.mark.deployed]
ROUNDS = 3


def rounds_aggregated(events: list[Event]) -> list[int]:
    return [e.round for e in of_type(events, RoundAggregated)]


async def restart_after_round_1(deployment: Deployment) -> tuple[list[Event], list[Event]]:
    """Kill the coordinator once round 1 is aggregated, start another; returns the log at the kill and at the end."""
    async with deployment.run_log() as log:
        await log.until(lambda events: 1 in rounds_aggregated(events), what="round 1 aggregated")
        deployment.fleet["coordinator"].kill()
        at_kill = await log.events()
        deployment.start_coordinator("coordinator-2")
        final = await log.until(lambda events: bool(of_type(events, RunCompleted)), what="RunCompleted")
    return at_kill, final


def test_a_restarted_coordinator_rebuilds_the_run_from_the_log_and_completes_it_without_repeating_a_round(
    deployment: Deployment,
) -> None:
    deployment.write_config(clients=2, rounds=ROUNDS, round={"timeout_s": 90.0})
    deployment.start_coordinator()
    deployment.start_aggregator("aggregator")
    clients = [deployment.start_client(f"client-{i}") for i in range(2)]
    ids = {deployment.client_id(process) for process in clients}

    at_kill, final = asyncio.run(restart_after_round_1(deployment))

    # Round 3 can only have been started by the new coordinator.
    assert rounds_aggregated(at_kill) == [1] and not any(e.round == 3 for e in of_type(at_kill, RoundStarted))
    assert [(e.round, e.attempt) for e in of_type(final, RoundStarted)] == [(1, 1), (2, 1), (3, 1)]
    assert [e.round for e in of_type(final, QuorumReached)] == [1, 2, 3]
    assert rounds_aggregated(final) == [1, 2, 3]
    assert {e.client_id for e in of_type(final, UpdateAccepted) if e.round == ROUNDS} == ids
    assert len(of_type(final, RunCompleted)) == 1 and of_type(final, RunCompleted)[0].reason == "max_rounds"
    assert "already in the log: continuing it" in deployment.fleet["coordinator-2"].output()
    assert all(client.returncode is None for client in clients)
