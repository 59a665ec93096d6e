"""Background loops stop between their iterations: the outbox relay and the coordinator's tick finish the query
in progress instead of being cancelled inside it (SQLAlchemy logs a traceback for a connection cancelled
mid-statement), and a loop that does not stop in time is cancelled."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

from contracts.envelope import RecordedEvent
from ops.lifecycle import LoopStop, stop_tasks
from persistence.in_memory_event_log import InMemoryEventLog
from services.coordinator.coordinator import Coordinator
from services.relay import OutboxRelay


class HeldQuery:
    """A query that starts, then waits for `release`; it records whether it was cancelled or finished."""

    def __init__(self) -> None:
        self.started = asyncio.Event()
        self.release = asyncio.Event()
        self.outcomes: list[str] = []

    async def run(self) -> None:
        self.started.set()
        try:
            await self.release.wait()
        except asyncio.CancelledError:
            self.outcomes.append("cancelled")
            raise
        self.outcomes.append("finished")


class HeldOutbox:
    def __init__(self, query: HeldQuery) -> None:
        self.query = query

    async def unpublished(self, limit: int = 100) -> list[RecordedEvent]:
        await self.query.run()
        return []

    async def mark_published(self, positions: Sequence[int]) -> None:
        raise AssertionError("nothing was published")


class NoPublisher:
    async def publish(self, envelope: object) -> None:
        raise AssertionError("nothing to publish")


class HeldLog(InMemoryEventLog):
    def __init__(self, query: HeldQuery) -> None:
        super().__init__()
        self.query = query

    async def read_all(self, after_position: int = 0, limit: int = 1000) -> list[RecordedEvent]:
        await self.query.run()
        return []


async def stopped_mid_query(start: object, stop: object, query: HeldQuery) -> asyncio.Task[None]:
    task = asyncio.create_task(start())  # type: ignore[operator]
    await query.started.wait()
    stop()  # type: ignore[operator]
    await asyncio.sleep(0.05)
    assert not task.done(), "the loop waits for the query in progress"
    query.release.set()
    await asyncio.wait_for(task, 1.0)
    return task


def test_the_relay_stopped_mid_read_finishes_the_read_and_ends() -> None:
    query = HeldQuery()
    relay = OutboxRelay(HeldOutbox(query), NoPublisher(), interval=0.01)  # type: ignore[arg-type]

    asyncio.run(stopped_mid_query(relay.run_forever, relay.stop, query))

    assert query.outcomes == ["finished"]


def test_the_tick_stopped_mid_read_finishes_the_tick_and_ends() -> None:
    query = HeldQuery()
    coordinator = Coordinator(HeldLog(query))

    asyncio.run(stopped_mid_query(lambda: coordinator.tick_forever(interval=0.01), coordinator.stop_ticking, query))

    assert query.outcomes == ["finished"]


def test_a_stopped_loop_ends_during_its_wait_and_one_that_ignores_the_stop_is_cancelled_after_the_grace() -> None:
    async def scenario() -> tuple[bool, bool]:
        stop = LoopStop()

        async def polite() -> None:
            while not stop.is_set():
                await stop.sleep(60.0)

        async def deaf() -> None:
            await asyncio.sleep(60.0)

        tasks = [asyncio.create_task(polite()), asyncio.create_task(deaf())]
        await asyncio.sleep(0)
        stop.set()
        await stop_tasks(tasks, grace=0.2)
        return tasks[0].cancelled(), tasks[1].cancelled()

    polite_cancelled, deaf_cancelled = asyncio.run(scenario())

    assert not polite_cancelled and deaf_cancelled
