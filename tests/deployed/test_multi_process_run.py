"""A whole run as separate OS processes: coordinator, two competing aggregators and four clients."""

from __future__ import annotations

import asyncio

import pytest

from contracts.events import (
    Event,
    ModelInitialized,
    QuorumReached,
    RoundAggregated,
    RoundStarted,
    RunCompleted,
    RunCreated,
    UpdateAccepted,
)
from tests.deployed.world import Deployment, of_type

pytestmark = [pytest.mark.integration, pytest.mark.deployed]
CLIENTS = 4
ROUNDS = 3


def completed(events: list[Event]) -> bool:
    return bool(of_type(events, RunCompleted))


async def run_to_completion(deployment: Deployment) -> list[Event]:
    async with deployment.run_log() as log:
        return await log.until(completed, what="RunCompleted")


def test_four_clients_two_aggregators_three_dp_rounds_complete_with_rising_accuracy(
    deployment: Deployment,
) -> None:
    deployment.write_config(clients=CLIENTS, rounds=ROUNDS)
    deployment.start_coordinator()
    for i in range(2):
        deployment.start_aggregator(f"aggregator-{i}")
    for i in range(CLIENTS):
        deployment.start_client(f"client-{i}")

    events = asyncio.run(run_to_completion(deployment))

    kinds = {type(e) for e in events}
    assert {RunCreated, ModelInitialized, RoundStarted, UpdateAccepted, QuorumReached, RoundAggregated} <= kinds
    assert len(of_type(events, ModelInitialized)) == 1
    assert [e.round for e in of_type(events, RoundStarted)] == [1, 2, 3]
    assert [e.round for e in of_type(events, QuorumReached)] == [1, 2, 3]
    assert [e.round for e in of_type(events, RoundAggregated)] == [1, 2, 3]
    assert sorted(e.round for e in of_type(events, UpdateAccepted)) == [r for r in (1, 2, 3) for _ in range(CLIENTS)]
    done = of_type(events, RunCompleted)
    assert len(done) == 1 and done[0].reason == "max_rounds" and isinstance(events[-1], RunCompleted)
    accuracy = {e.round: e.metrics["accuracy"] for e in of_type(events, RoundAggregated)}
    assert accuracy[3] > accuracy[1]
    assert model_chain(events) == [0, 1, 2, 3]


def model_chain(events: list[Event]) -> list[int]:
    """The model versions in log order, checking that each round starts from the latest model's digest."""
    latest: tuple[int, str] | None = None
    versions = []
    for event in events:
        if isinstance(event, ModelInitialized | RoundAggregated):
            versions.append(event.model_version)
            latest = (event.model_version, event.model_digest)
        elif isinstance(event, RoundStarted):
            assert latest is not None, "a round started before the initial model"
            assert (event.model_version, event.model_digest) == latest, f"round {event.round} starts off the chain"
    return versions
