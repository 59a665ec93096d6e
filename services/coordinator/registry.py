"""The client registry: who registered, under which instance name and simulated share, and who was evicted.

Folded from the `client:` streams, which other writers append to as well (the API's evictions, a second
coordinator's registrations); `apply` takes in what the coordinator's log tail finds.

An identity goes back to a caller only with proof: the first registration of an instance name hands out a
client secret, the log keeps its sha256, and registering under that name again must present the secret.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import secrets
import uuid
from dataclasses import dataclass

from contracts.envelope import Envelope
from contracts.errors import FedbusError, NotFound
from contracts.events import ClientEvicted, ClientRegistered, Event
from contracts.ports import EventStore
from contracts.streams import client_stream
from contracts.uploads import ClientCapabilities, check_text
from ops.telemetry import current_traceparent
from services.coordinator.decide import ClientPool


class IdentityClaimed(FedbusError):
    """An instance name that belongs to a registered client, asked for without its client secret."""


@dataclass(slots=True)
class ClientRecord:
    client_id: str
    instance_name: str
    secret_sha256: str = ""
    evicted: bool = False


@dataclass(frozen=True, slots=True)
class Enrolment:
    """What a registration hands out: the identity and, the first time only, its client secret."""

    record: ClientRecord
    secret: str = ""


def secret_digest(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


class ClientRegistry:
    def __init__(self, log: EventStore) -> None:
        self._log = log
        self._lock = asyncio.Lock()
        self._clients: dict[str, ClientRecord] = {}

    def apply(self, event: Event) -> None:
        """Fold a registration or an eviction found in the log."""
        if isinstance(event, ClientRegistered):
            name = str(event.capabilities.get("instance_name", ""))
            record = ClientRecord(event.client_id, name, event.secret_sha256)
            self._clients[event.client_id] = record
        elif isinstance(event, ClientEvicted) and event.client_id in self._clients:
            self._clients[event.client_id].evicted = True

    def pool(self) -> ClientPool:
        active = frozenset(c.client_id for c in self._clients.values() if not c.evicted)
        return ClientPool(active=active)

    def active_count(self) -> int:
        return sum(1 for c in self._clients.values() if not c.evicted)

    async def register(self, capabilities: ClientCapabilities, instance_name: str = "", secret: str = "") -> Enrolment:
        """A new identity, or the one registered under `instance_name` for the caller that presents its secret.

        IdentityClaimed when the name is taken and the secret does not match: a lost secret is recovered by an
        operator evicting the old identity, after which the name registers anew.
        """
        check_text("instance_name", instance_name)
        check_text("client_secret", secret, max_length=128)
        async with self._lock:
            existing = self._named(instance_name)
            if existing is not None:
                proof = secret_digest(secret) if secret else ""
                if not (existing.secret_sha256 and hmac.compare_digest(proof, existing.secret_sha256)):
                    raise IdentityClaimed(
                        f"instance name {instance_name!r} belongs to client {existing.client_id}: present its client"
                        f" secret, or have an operator evict {existing.client_id} first"
                    )
                return Enrolment(existing)
            return await self._enrol(capabilities, instance_name)

    def _named(self, instance_name: str) -> ClientRecord | None:
        if not instance_name:
            return None
        return next((c for c in self._clients.values() if c.instance_name == instance_name and not c.evicted), None)

    async def _enrol(self, capabilities: ClientCapabilities, instance_name: str) -> Enrolment:
        client_id, secret = f"c-{uuid.uuid4().hex[:12]}", secrets.token_urlsafe(32)
        caps = {
            "device": capabilities.device,
            "cores": capabilities.cores,
            "memory_bytes": capabilities.memory_bytes,
            "hostname": capabilities.hostname,
            "instance_name": instance_name,
            "own_data": capabilities.own_data,
        }
        # What the client trains on is its own setting: the coordinator records only whether it said so.
        event = ClientRegistered(client_id=client_id, capabilities=caps, secret_sha256=secret_digest(secret))
        envelope = Envelope(event=event, traceparent=current_traceparent())  # joins the Register call's trace
        await self._log.append(client_stream(client_id), [envelope], expected_version=0)
        self.apply(event)
        return Enrolment(self._clients[client_id], secret)

    async def evict(self, client_id: str, reason: str) -> None:
        async with self._lock:
            record = self._clients.get(client_id)
            if record is None:
                raise NotFound(f"no client {client_id!r}")
            if not record.evicted:
                event = ClientEvicted(client_id=client_id, reason=reason)
                await self._log.append(client_stream(client_id), [Envelope(event=event)])
                record.evicted = True
