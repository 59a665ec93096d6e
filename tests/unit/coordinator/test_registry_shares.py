"""The coordinator hands out identities, never data: what a client trains on is the client's own setting.

A registration records whether the client said it has data of its own, and nothing about which data; an
event written while the coordinator still handed out simulated shares reads as it always did.
"""

from __future__ import annotations

import asyncio

from contracts.event_codec import event_from_dict
from contracts.events import ClientRegistered
from contracts.uploads import ClientCapabilities
from persistence.in_memory_event_log import InMemoryEventLog
from services.coordinator.registry import ClientRegistry


def test_a_registration_records_no_data_share_only_whether_the_client_has_its_own() -> None:
    async def register() -> list[ClientRegistered]:
        log = InMemoryEventLog()
        registry = ClientRegistry(log)
        for name, own in (("a", False), ("site", True)):
            await registry.register(ClientCapabilities(own_data=own), name)
        return [r.envelope.event for r in await log.read_all() if isinstance(r.envelope.event, ClientRegistered)]

    a, site = asyncio.run(register())

    assert (a.capabilities["own_data"], site.capabilities["own_data"]) == (False, True)
    assert not {"partition_index", "partition_count", "share"} & (set(a.capabilities) | {"client_id"})


def test_a_registration_logged_with_a_partition_index_still_reads() -> None:
    event = event_from_dict("ClientRegistered", {"client_id": "c-1", "partition_index": 3, "capabilities": {}})

    assert event == ClientRegistered(client_id="c-1", capabilities={})
