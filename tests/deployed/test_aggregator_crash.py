"""An aggregator killed with QuorumReached in hand: another one takes the redelivery, aggregating once.

The moment is made, not raced: once the initial model is in, the test takes an exclusive lock on the inbox
table, the one table only the aggregator's commit touches. Aggregator A then receives round 1's
QuorumReached, does all the work and blocks in the first statement of its commit (the inbox claim), holding
the message unacknowledged. The test kills A there, the worst moment, releases the lock and starts B.
"""

from __future__ import annotations

import asyncio

import pytest
from sqlalchemy import text

from contracts.events import Event, ModelInitialized, QuorumReached, RoundAggregated, RunCompleted
from tests.deployed.world import Deployment, RunLog, of_type, unacknowledged
from tests.support.polling import eventually

pytestmark = [pytest.mark.integration, pytest.mark.deployed]

BLOCKED_CLAIMS = text(
    "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND pid <> pg_backend_pid() "
    "AND wait_event_type = 'Lock' AND query ILIKE '%INSERT INTO inbox%'"
)


async def blocked_claims(log: RunLog) -> int:
    async with log.event_log.engine.connect() as conn:
        return int(await conn.scalar(BLOCKED_CLAIMS) or 0)


def quorum_of_round_1(events: list[Event]) -> bool:
    return any(e.round == 1 for e in of_type(events, QuorumReached))


async def kill_a_while_it_commits_round_1(deployment: Deployment, log: RunLog) -> list[Event]:
    """Kill aggregator A blocked in its commit of round 1; returns the log right after."""

    async def held_by_a() -> int:
        return await asyncio.to_thread(unacknowledged, deployment.vhost, "fedbus.aggregator")

    await log.until(lambda events: bool(of_type(events, ModelInitialized)), what="the initial model")
    async with log.event_log.engine.connect() as held:
        await held.begin()
        await held.execute(text("LOCK TABLE inbox IN ACCESS EXCLUSIVE MODE"))
        await log.until(quorum_of_round_1, what="round 1's QuorumReached")
        await eventually(lambda: blocked_claims(log), lambda n: n >= 1, within=120, interval=0.2)
        # RabbitMQ refreshes queue statistics every few seconds: poll rather than read once.
        await eventually(held_by_a, lambda n: n == 1, within=60, interval=0.5)
        deployment.fleet["aggregator-a"].kill()
        await held.rollback()
    return await log.events()


async def scenario(deployment: Deployment) -> tuple[list[Event], list[Event]]:
    async with deployment.run_log() as log:
        at_kill = await kill_a_while_it_commits_round_1(deployment, log)
        deployment.start_aggregator("aggregator-b")
        final = await log.until(lambda events: bool(of_type(events, RunCompleted)), what="RunCompleted")
    return at_kill, final


def test_an_aggregator_killed_after_taking_quorum_is_replaced_and_the_round_is_aggregated_once(
    deployment: Deployment,
) -> None:
    deployment.write_config(clients=2, rounds=2)
    deployment.start_coordinator()
    deployment.start_aggregator("aggregator-a")
    for i in range(2):
        deployment.start_client(f"client-{i}")

    at_kill, final = asyncio.run(scenario(deployment))

    assert quorum_of_round_1(at_kill) and not of_type(at_kill, RoundAggregated)
    assert [e.round for e in of_type(final, RoundAggregated)] == [1, 2]
    assert [e.model_version for e in of_type(final, RoundAggregated)] == [1, 2]
    assert of_type(final, RunCompleted)[0].reason == "max_rounds"
    assert "aggregated round 1" not in deployment.fleet["aggregator-a"].output()
    assert "aggregated round 1" in deployment.fleet["aggregator-b"].output()
