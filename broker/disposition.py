"""One table from a delivery's outcome to what the broker does with the message (ack / requeue / dead-letter).

Handlers never retry: a requeue is a retry, and the queue's delivery limit turns endless failure into a
dead letter. asyncio.CancelledError is not an outcome: it propagates, and the unsettled message is
requeued because its consumer went away.
"""

from __future__ import annotations

import enum
import logging
from typing import Final

from contracts.envelope import Envelope
from contracts.errors import CodecError, TransientError
from contracts.event_codec import decode_envelope
from contracts.ports import Handler

log = logging.getLogger(__name__)


class Disposition(enum.Enum):
    ACK = "ack"
    REQUEUE = "requeue"
    DEAD_LETTER = "dead_letter"


# First match wins; order from specific to general. CodecError covers UnknownEventType. Any other error
# is requeued (a bug or an outage may be gone on redelivery; the redelivery limit bounds the retries).
DISPOSITIONS: Final[tuple[tuple[type[Exception], Disposition], ...]] = (
    (CodecError, Disposition.DEAD_LETTER),
    (TransientError, Disposition.REQUEUE),
)


def disposition_for(error: Exception | None) -> Disposition:
    """What to do with a message whose handler returned (None) or raised `error`."""
    if error is None:
        return Disposition.ACK
    for kind, disposition in DISPOSITIONS:
        if isinstance(error, kind):
            return disposition
    return Disposition.REQUEUE


async def settle(handler: Handler, body: bytes, *, message_id: str, queue: str) -> Disposition:
    """Decode `body`, run `handler` on it and decide the disposition; undecodable bodies skip the handler."""
    try:
        envelope: Envelope = decode_envelope(body)
    except CodecError as exc:
        log.warning("dead-lettering undecodable message %s on %s: %s", message_id, queue, exc)
        return Disposition.DEAD_LETTER
    try:
        await handler(envelope)
    except Exception as exc:  # the table decides; CancelledError is no Exception and propagates
        disposition = disposition_for(exc)
        log.warning(
            "handler for %s on %s raised %s: %s -> %s",
            envelope.type,
            queue,
            type(exc).__name__,
            exc,
            disposition.value,
        )
        return disposition
    return Disposition.ACK
