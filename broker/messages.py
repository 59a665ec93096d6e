"""What a queued message looks like from outside the broker, and the AMQP headers of an envelope."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Final

from contracts.envelope import Envelope

CONTENT_TYPE: Final = "application/msgpack"
JSON_CONTENT_TYPE: Final = "application/json"  # the inspect ring's readable copies
DEATH_REASON_HEADER: Final = "x-first-death-reason"


@dataclass(frozen=True, slots=True, kw_only=True)
class QueuedMessage:
    """A snapshot of one message sitting in a queue (for tests and operators)."""

    routing_key: str
    body: bytes
    message_id: str
    headers: dict[str, Any] = field(default_factory=dict)
    redelivered: bool = False

    @property
    def death_reason(self) -> str | None:
        """Why the message was dead-lettered (`rejected`, `expired`, `delivery_limit`, ...), if it was."""
        reason = self.headers.get(DEATH_REASON_HEADER)
        return reason if isinstance(reason, str) else None


def headers_for(envelope: Envelope) -> dict[str, Any]:
    """The `run_id`, `round` and `traceparent` headers of an envelope; None values are left out."""
    headers: dict[str, Any] = {
        "run_id": envelope.run_id,
        "round": envelope.round,
        "traceparent": envelope.traceparent,
    }
    return {name: value for name, value in headers.items() if value is not None}
