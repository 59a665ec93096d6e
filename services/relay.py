"""The outbox relay: publishes appended events in position order and marks what it published.

At-least-once: a crash between publish and mark publishes again, and every consumer is idempotent.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

from broker.errors import Unroutable
from contracts.errors import TransientError
from contracts.ports import Outbox, Publisher
from ops.lifecycle import LoopStop
from ops.telemetry import attached

log = logging.getLogger(__name__)


class OutboxRelay:
    def __init__(self, log_: Outbox, publisher: Publisher, *, interval: float = 0.05, batch: int = 100) -> None:
        self._log = log_
        self._publisher = publisher
        self._interval = interval
        self._batch = batch
        self._wake = asyncio.Event()
        self._stop = LoopStop()
        self.published = 0

    def stop(self) -> None:
        """End run_forever once the batch in progress is published and marked."""
        self._stop.set()
        self._wake.set()

    def wake(self) -> None:
        """Publish soon (after an append) instead of at the next poll."""
        self._wake.set()

    async def relay_once(self) -> int:
        """Publish what is pending; returns how many events went out."""
        sent = 0
        while pending := await self._log.unpublished(limit=self._batch):
            published: list[int] = []
            try:
                for recorded in pending:
                    with attached(recorded.envelope.traceparent):
                        try:
                            await self._publisher.publish(recorded.envelope)
                        except Unroutable:
                            # No queue binds this event (a topology without the inspect ring): nobody to tell.
                            log.info("outbox relay: %s is unroutable; marking it published", recorded.envelope.type)
                    published.append(recorded.position)
            finally:  # what went out is marked in one statement, also when a later publish failed
                if published:
                    await self._log.mark_published(published)
                    sent += len(published)
                    self.published += len(published)
            if len(pending) < self._batch:
                break  # that was the whole tail: no second read to find it empty
        return sent

    async def run_forever(self) -> None:
        while not self._stop.is_set():
            try:
                await self.relay_once()
            except TransientError as exc:
                log.warning("outbox relay: %s; retrying", exc)
                await self._stop.sleep(1.0)
            except Exception:
                log.exception("outbox relay failed; retrying")
                await self._stop.sleep(1.0)
            if self._stop.is_set():
                break
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self._interval)
