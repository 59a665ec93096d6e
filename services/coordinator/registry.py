"""The client registry: who registered, under which instance name and partition, and who was evicted.

Folded from the `client:` streams, which other writers append to as well (the API's evictions, a second
coordinator's registrations); `apply` takes in what the coordinator's log tail finds.
"""

from __future__ import annotations

import asyncio
import uuid
from dataclasses import dataclass

from contracts.envelope import Envelope
from contracts.errors import NotFound
from contracts.events import ClientEvicted, ClientRegistered, Event
from contracts.ports import EventStore
from contracts.streams import client_stream
from contracts.uploads import ClientCapabilities
from services.coordinator.decide import ClientPool


@dataclass(slots=True)
class ClientRecord:
    client_id: str
    partition_index: int
    instance_name: str
    evicted: bool = False


class ClientRegistry:
    def __init__(self, log: EventStore, *, partition_count: int) -> None:
        self._log = log
        self._lock = asyncio.Lock()
        self._clients: dict[str, ClientRecord] = {}
        self.partition_count = partition_count

    def apply(self, event: Event) -> None:
        """Fold a registration or an eviction found in the log."""
        if isinstance(event, ClientRegistered):
            name = str(event.capabilities.get("instance_name", ""))
            self._clients[event.client_id] = ClientRecord(event.client_id, event.partition_index, name)
        elif isinstance(event, ClientEvicted) and event.client_id in self._clients:
            self._clients[event.client_id].evicted = True

    def pool(self) -> ClientPool:
        active = frozenset(c.client_id for c in self._clients.values() if not c.evicted)
        return ClientPool(active=active, partition_count=self.partition_count)

    def active_count(self) -> int:
        return sum(1 for c in self._clients.values() if not c.evicted)

    async def register(self, capabilities: ClientCapabilities, instance_name: str = "") -> ClientRecord:
        """A new identity, or the one registered under `instance_name` (a client coming back after a restart)."""
        async with self._lock:
            for record in self._clients.values():
                if instance_name and record.instance_name == instance_name and not record.evicted:
                    return record
            client_id = f"c-{uuid.uuid4().hex[:12]}"
            index = len(self._clients) % self.partition_count
            caps = {
                "device": capabilities.device,
                "cores": capabilities.cores,
                "memory_bytes": capabilities.memory_bytes,
                "hostname": capabilities.hostname,
                "instance_name": instance_name,
            }
            event = ClientRegistered(client_id=client_id, partition_index=index, capabilities=caps)
            await self._log.append(client_stream(client_id), [Envelope(event=event)], expected_version=0)
            self.apply(event)
            return self._clients[client_id]

    async def evict(self, client_id: str, reason: str) -> None:
        async with self._lock:
            record = self._clients.get(client_id)
            if record is None:
                raise NotFound(f"no client {client_id!r}")
            if not record.evicted:
                event = ClientEvicted(client_id=client_id, reason=reason)
                await self._log.append(client_stream(client_id), [Envelope(event=event)])
                record.evicted = True
