"""Only simulated clients get a share of the simulation's global data set; a site with its own data gets none
and takes no share from the others."""

from __future__ import annotations

import asyncio

from contracts.uploads import ClientCapabilities
from persistence.in_memory_event_log import InMemoryEventLog
from services.coordinator.registry import ClientRegistry


def test_sites_with_their_own_data_get_no_share_and_take_none() -> None:
    async def register() -> list[int]:
        registry = ClientRegistry(InMemoryEventLog(), partition_count=2)
        indices = []
        for name, own in (("a", False), ("site", True), ("b", False), ("c", False)):
            enrolment = await registry.register(ClientCapabilities(own_data=own), name)
            indices.append(enrolment.record.partition_index)
        return indices

    assert asyncio.run(register()) == [0, -1, 1, 0]
