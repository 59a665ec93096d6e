"""A stateful strategy (FedAdam) over separate processes: its server state outlives an aggregator killed with
SIGKILL and a coordinator restart, because it is a blob named by each RoundAggregated and handed to the next
QuorumReached, never memory of one process. User-level DP's adaptive clip norm travels the same way, and
FedBuff's buffers lose and double-count nothing when an aggregator dies while one fills."""

from __future__ import annotations

import asyncio

import pytest

from contracts.events import Event, QuorumReached, RoundAggregated, RunCompleted, UpdateAccepted
from contracts.tensor_codec import decode_tensors
from tests.deployed.world import Deployment, of_type
from workers.learning.strategies import STEP
from workers.learning.user_privacy import CLIP_NORM, ROUNDS

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


def start_two_of_each(deployment: Deployment) -> None:
    """The coordinator, two competing aggregators (a and b) and two clients."""
    deployment.start_coordinator()
    deployment.start_aggregator("aggregator-a")
    deployment.start_aggregator("aggregator-b")
    for i in range(2):
        deployment.start_client(f"client-{i}")


def test_fedadam_state_survives_an_aggregator_kill_and_a_coordinator_restart(deployment: Deployment) -> None:
    deployment.write_config(clients=2, rounds=3, strategy={"name": "fedadam", "server_lr": 0.05})
    start_two_of_each(deployment)

    events, steps = asyncio.run(scenario(deployment))

    assert of_type(events, RunCompleted)[0].reason == "max_rounds"
    rounds = of_type(events, RoundAggregated)
    assert [e.round for e in rounds] == [1, 2, 3]
    assert steps == {1: 1.0, 2: 2.0, 3: 3.0}  # each round took up the state the one before left
    quorums = {e.round: e.server_state for e in of_type(events, QuorumReached)}
    assert quorums[1] == "" and quorums[2] == rounds[0].server_state and quorums[3] == rounds[1].server_state


async def kill_after_round_one(deployment: Deployment) -> tuple[list[Event], dict[int, dict[str, float]]]:
    async with deployment.run_log() as log:
        await log.until(aggregated(1), what="round 1 aggregated")
        deployment.fleet["aggregator-a"].kill()
        events = await log.until(lambda e: bool(of_type(e, RunCompleted)), what="RunCompleted", within=400)
        kept = {}
        for done in of_type(events, RoundAggregated):
            state = decode_tensors(await log.event_log.get_blob(done.server_state))
            kept[done.round] = {"clip_norm": float(state[CLIP_NORM][0]), "rounds": float(state[ROUNDS][0])}
    return events, kept


def test_the_adaptive_clip_norm_survives_an_aggregator_kill(deployment: Deployment) -> None:
    user_privacy = {"enabled": True, "noise_multiplier": 0.5, "clip_norm": 0.3, "clip_count_stddev": 1.0}
    deployment.write_config(clients=2, rounds=2, user_privacy=user_privacy, strategy={"name": "fedavgm"})
    start_two_of_each(deployment)

    events, kept = asyncio.run(kill_after_round_one(deployment))

    assert of_type(events, RunCompleted)[0].reason == "max_rounds"
    first, second = of_type(events, RoundAggregated)
    assert first.metrics["user_clip_norm"] == 0.3  # the configured start
    assert kept[1]["clip_norm"] == first.metrics["user_next_clip_norm"] != 0.3
    # whichever aggregator took round 2 (the killed one's queue share went to the other) clipped to round 1's C
    assert second.metrics["user_clip_norm"] == kept[1]["clip_norm"] and kept[2]["rounds"] == 2.0
    assert second.metrics["user_epsilon"] > first.metrics["user_epsilon"] > 0
    assert [e.sampling["kind"] for e in of_type(events, QuorumReached)] == ["poisson", "poisson"]


async def kill_mid_buffer(deployment: Deployment) -> list[Event]:
    async with deployment.run_log() as log:
        await log.until(aggregated(1), what="buffer 1 aggregated")
        await log.until(lambda e: any(u.round == 2 for u in of_type(e, UpdateAccepted)), what="buffer 2 filling")
        deployment.fleet["aggregator-a"].kill()  # SIGKILL while buffer 2 fills: its queue share goes to b
        return await log.until(lambda e: bool(of_type(e, RunCompleted)), what="RunCompleted", within=400)


def test_fedbuff_loses_and_double_counts_no_update_when_an_aggregator_is_killed_mid_buffer(
    deployment: Deployment,
) -> None:
    deployment.write_config(clients=3, rounds=4, strategy={"name": "fedbuff", "buffer_size": 2})
    deployment.start_coordinator()
    deployment.start_aggregator("aggregator-a")
    deployment.start_aggregator("aggregator-b")
    for i in range(3):
        deployment.start_client(f"client-{i}")

    events = asyncio.run(kill_mid_buffer(deployment))

    assert of_type(events, RunCompleted)[0].reason == "max_rounds"
    done = {(e.round, e.attempt) for e in of_type(events, RoundAggregated)}
    quorums = [q for q in of_type(events, QuorumReached) if (q.round, q.attempt) in done]
    assert [q.round for q in quorums] == [1, 2, 3, 4] and all(len(q.update_ids) == 2 for q in quorums)
    counted = [u for q in quorums for u in q.update_ids]
    assert len(counted) == len(set(counted))  # no update in two buffers
    last = events.index(quorums[-1])
    for position, accepted in enumerate(events):  # every update accepted before the last buffer closed counts
        if isinstance(accepted, UpdateAccepted) and position < last:
            assert accepted.update_id in counted, accepted
    # three clients trained on version 0 and buffer 1 took two: the third counted later, staleness-weighted
    assert quorums[0].staleness == (0, 0) and any(s > 0 for q in quorums[1:] for s in q.staleness)
