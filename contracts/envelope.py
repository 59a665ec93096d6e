"""Envelope: the metadata around an event on the wire and in the log."""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass, field

from contracts.events import Event, routing_key_of, type_name_of

SCHEMA_VERSION = 1


@dataclass(frozen=True, slots=True, kw_only=True)
class Envelope:
    event: Event
    event_id: str = field(default_factory=lambda: uuid.uuid4().hex)
    occurred_at: float = field(default_factory=time.time)
    schema_version: int = SCHEMA_VERSION
    traceparent: str | None = None

    @property
    def type(self) -> str:
        return type_name_of(self.event)

    @property
    def routing_key(self) -> str:
        return routing_key_of(self.event)

    @property
    def run_id(self) -> str | None:
        return getattr(self.event, "run_id", None)

    @property
    def round(self) -> int | None:
        return getattr(self.event, "round", None)


@dataclass(frozen=True, slots=True, kw_only=True)
class RecordedEvent:
    """An envelope as the log stored it."""

    envelope: Envelope
    position: int
    stream_id: str
    version: int
