"""200 concurrent clients upload to one coordinator: past capacity it sheds load, and nothing is lost."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from contracts.events import QuorumReached, UpdateAccepted
from persistence.in_memory_event_log import InMemoryEventLog, InMemoryUnitOfWork
from tests.integration.grpc_world import update_payload, world

CLIENTS = 200


class SlowCommitLog(InMemoryEventLog):
    """A log whose transactions take 5 ms, like a database under load: uploads pile up at the coordinator."""

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[InMemoryUnitOfWork]:
        await asyncio.sleep(0.005)
        async with super().transaction() as uow:
            yield uow


def test_two_hundred_concurrent_uploads_are_shed_and_retried_not_collapsed() -> None:
    async def scenario() -> None:
        async with world(clients=CLIENTS, max_concurrent_uploads=16, attempts=30, log=SlowCommitLog()) as w:
            payloads = [update_payload(w.model, seed=i) for i in range(CLIENTS)]

            replies = await asyncio.gather(
                *(t.upload(w.header_for(reg, p), p) for (t, reg), p in zip(w.clients, payloads, strict=True))
            )

            assert all(r.accepted for r in replies)
            accepted = await w.events_of(UpdateAccepted)
            assert len(accepted) == CLIENTS and len({a.client_id for a in accepted}) == CLIENTS
            [quorum] = await w.events_of(QuorumReached)
            assert len(quorum.update_ids) == CLIENTS
            shed = w.coordinator.metrics.registry.get_sample_value("fedbus_uploads_shed_total")
            assert shed is not None and shed > 0, "16 slots for 200 concurrent uploads must shed some"

    asyncio.run(scenario())
