"""The commit loop around the decider, on the in-memory event log with a fake clock: restarts and conflicts."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import pytest

from contracts.config import PrivacyConfig, RoundConfig, RunConfig
from contracts.envelope import Envelope, RecordedEvent
from contracts.events import ModelInitialized, QuorumReached, RoundAggregated, RoundStarted, RunCompleted
from contracts.streams import run_stream
from contracts.update_validation import RejectReason
from contracts.uploads import ClientCapabilities, UploadHeader
from persistence.in_memory_event_log import InMemoryEventLog, InMemoryUnitOfWork
from services.coordinator import decide
from services.coordinator.coordinator import Coordinator
from services.coordinator.errors import UploadRefused

RUN = "r1"


class FakeClock:
    def __init__(self, now: float = 0.0) -> None:
        self.time = now

    def now(self) -> float:
        return self.time


class InterleavingLog(InMemoryEventLog):
    """Another writer appends `foreign` to the run's stream just before the coordinator's next transaction."""

    def __init__(self) -> None:
        super().__init__()
        self.foreign: list[Envelope] = []

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[InMemoryUnitOfWork]:
        if self.foreign:
            sneaked, self.foreign = self.foreign, []
            await super().append(run_stream(RUN), sneaked)
        async with super().transaction() as uow:
            yield uow


def run_config() -> RunConfig:
    rules = RoundConfig(quorum=0.5, grace_s=10.0, timeout_s=100.0)
    return RunConfig(clients=4, rounds=3, privacy=PrivacyConfig(enabled=False), round=rules)


async def started_run(log: InMemoryEventLog, clock: FakeClock) -> tuple[Coordinator, list[str]]:
    coordinator = Coordinator(log, clock=clock)
    clients = [
        (await coordinator.clients.register(ClientCapabilities(), f"site-{i}")).record.client_id for i in range(4)
    ]
    await coordinator.create_run(run_config(), RUN)
    init = ModelInitialized(run_id=RUN, model_version=0, model_digest="m0", num_parameters=1)
    await log.append(run_stream(RUN), [Envelope(event=init)])
    await coordinator.advance(RUN)
    return coordinator, clients


async def accept(coordinator: Coordinator, client_id: str, *, fresh: bool = True) -> None:
    header = UploadHeader(
        run_id=RUN, round=1, client_id=client_id, base_model_version=0, num_samples=5, codec="int8",
        total_size=10, sha256="b" * 64,
    )  # fmt: skip
    pool = coordinator.clients.pool()
    await coordinator.runs.commit(
        RUN,
        lambda run, now: decide.accept(run, header, update_id=f"u-{client_id}", wire_bytes=10, pool=pool, now=now),
        lambda run, now: decide.due(run, pool, now),
        fresh=fresh,
        blobs=[(header.sha256, "update", f"update of {client_id}".encode())],
    )


async def kinds(log: InMemoryEventLog) -> list[str]:
    return [r.envelope.type for r in await log.read_stream(run_stream(RUN))]


def test_a_coordinator_restarted_during_the_grace_period_keeps_its_deadline() -> None:
    async def scenario() -> None:
        log, clock = InMemoryEventLog(), FakeClock()
        first, clients = await started_run(log, clock)
        clock.time = 1.0
        await accept(first, clients[0])
        clock.time = 3.0
        await accept(first, clients[1])  # the quorum (2 of 4) is met at t=3: grace until t=13

        clock.time = 8.0  # the coordinator restarts: a new process folds the same log
        restarted = Coordinator(log, clock=clock)
        await restarted.recover()
        await restarted.advance()
        assert "QuorumReached" not in await kinds(log)

        clock.time = 13.0
        await restarted.advance()
        assert (await kinds(log)).count("QuorumReached") == 1

    asyncio.run(scenario())


def test_a_conflicting_append_is_folded_and_the_decision_taken_again_once() -> None:
    async def scenario() -> None:
        log, clock = InterleavingLog(), FakeClock()
        coordinator, _ = await started_run(log, clock)
        stopped = RunCompleted(run_id=RUN, reason="stopped", rounds=0, metrics={})
        log.foreign = [Envelope(event=stopped)]  # e.g. the API stops the run while the coordinator decides

        clock.time = 200.0  # past the deadline: the round would fail
        await coordinator.advance(RUN)

        assert (await kinds(log))[-1] == "RunCompleted"
        assert "RoundFailed" not in await kinds(log)  # decided again on the refreshed state: nothing is due
        assert coordinator.run_state(RUN).completed == "stopped"

    asyncio.run(scenario())


def test_an_aggregation_appended_by_an_aggregator_opens_the_next_round() -> None:
    async def scenario() -> None:
        log, clock = InMemoryEventLog(), FakeClock()
        coordinator, clients = await started_run(log, clock)
        for client_id in clients:
            await accept(coordinator, client_id)
        [quorum] = [
            r.envelope.event for r in await log.read_stream(run_stream(RUN)) if r.envelope.type == "QuorumReached"
        ]
        assert isinstance(quorum, QuorumReached) and len(quorum.update_digests) == 4
        done = RoundAggregated(
            run_id=RUN, round=1, model_version=1, model_digest="m1", num_updates=4, metrics={"accuracy": 0.5},
            duration_s=1.0,
        )  # fmt: skip
        await log.append(run_stream(RUN), [Envelope(event=done)])

        await coordinator.advance(RUN)

        last = (await log.read_stream(run_stream(RUN)))[-1].envelope.event
        assert isinstance(last, RoundStarted) and (last.round, last.model_digest) == (2, "m1")

    asyncio.run(scenario())


def test_an_upload_decided_on_a_stale_run_conflicts_and_is_refused_on_the_current_one() -> None:
    async def scenario() -> None:
        log, clock = InMemoryEventLog(), FakeClock()
        coordinator, clients = await started_run(log, clock)
        stopped = RunCompleted(run_id=RUN, reason="stopped", rounds=0, metrics={})
        await log.append(run_stream(RUN), [Envelope(event=stopped)])  # the API stopped it: not read yet
        assert not coordinator.run_state(RUN).completed

        with pytest.raises(UploadRefused) as refused:
            await accept(coordinator, clients[0], fresh=False)

        assert refused.value.reason is RejectReason.ROUND_CLOSED
        assert "UpdateAccepted" not in await kinds(log)
        assert not await log.has_blob("b" * 64)  # stored only with its acceptance
        assert coordinator.run_state(RUN).completed == "stopped"

    asyncio.run(scenario())


def test_an_upload_decided_on_the_run_as_known_is_appended_and_folded_without_a_read_back() -> None:
    class CountingLog(InMemoryEventLog):
        reads = 0

        async def read_stream(self, stream_id: str, after_version: int = 0) -> list[RecordedEvent]:
            self.reads += 1
            return await super().read_stream(stream_id, after_version)

    async def scenario() -> None:
        log, clock = CountingLog(), FakeClock()
        coordinator, clients = await started_run(log, clock)
        before = log.reads

        await accept(coordinator, clients[0], fresh=False)

        assert log.reads == before
        stream = await log.read_stream(run_stream(RUN))
        state = coordinator.run_state(RUN)
        assert state.version == stream[-1].version and stream[-1].envelope.type == "UpdateAccepted"
        assert state.current is not None and clients[0] in state.current.accepted
        assert await log.get_blob("b" * 64) == f"update of {clients[0]}".encode()

    asyncio.run(scenario())
