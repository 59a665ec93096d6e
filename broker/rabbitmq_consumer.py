"""A RabbitMQ consumer on a channel of its own: manual acks, settled only after the handler finished."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable
from typing import Any

from aio_pika.abc import AbstractChannel, AbstractIncomingMessage, AbstractQueue
from aio_pika.exceptions import CONNECTION_EXCEPTIONS

from broker.disposition import Disposition, settle
from broker.messages import QueuedMessage
from contracts.ports import Handler

log = logging.getLogger(__name__)


class RabbitConsumer:
    """One consumer on its own channel; settles each message only after its handler finished."""

    def __init__(self, channel: AbstractChannel, queue: AbstractQueue, handler: Handler, *, timeout: float) -> None:
        self._channel = channel
        self._timeout = timeout
        self._queue = queue
        self._handler = handler
        self._tag: str | None = None
        self._in_flight: set[asyncio.Task[Any]] = set()

    async def start(self) -> None:
        self._tag = await self._queue.consume(self._on_message, no_ack=False)

    async def cancel(self) -> None:
        """Stop deliveries, cancel running handlers and close the channel, which requeues their messages.

        While the connection is down each broker call gives up after the timeout: the broker requeues
        unacked messages of a dead channel anyway.
        """
        if self._tag is not None:
            tag, self._tag = self._tag, None
            await self._bounded(self._queue.cancel(tag), "cancel the consumer")
        tasks = list(self._in_flight)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if not self._channel.is_closed:
            await self._bounded(self._channel.close(), "close the channel")

    async def _bounded(self, call: Awaitable[object], action: str) -> None:
        try:
            async with asyncio.timeout(self._timeout):
                await call
        except (TimeoutError, *CONNECTION_EXCEPTIONS) as exc:
            log.info("could not %s on %s: %r", action, self._queue.name, exc)

    async def _on_message(self, message: AbstractIncomingMessage) -> None:
        task = asyncio.current_task()
        if task is not None:
            self._in_flight.add(task)
        try:
            disposition = await settle(
                self._handler, message.body, message_id=message.message_id or "", queue=self._queue.name
            )
            # A handler that finished gets its settlement even if the consumer is being cancelled.
            await asyncio.shield(_apply(message, disposition))
        finally:
            if task is not None:
                self._in_flight.discard(task)


async def _apply(message: AbstractIncomingMessage, disposition: Disposition) -> None:
    try:
        if disposition is Disposition.ACK:
            await message.ack()
        elif disposition is Disposition.REQUEUE:
            await message.nack(requeue=True)
        else:
            await message.reject(requeue=False)  # the queue's dead-letter exchange takes it
    except CONNECTION_EXCEPTIONS as exc:
        # The channel went away: the broker requeues the unsettled message and delivers it again.
        log.warning("could not %s message %s: %r", disposition.value, message.message_id, exc)


def snapshot(message: AbstractIncomingMessage) -> QueuedMessage:
    """A received message as a QueuedMessage."""
    return QueuedMessage(
        routing_key=message.routing_key or "",
        body=message.body,
        message_id=message.message_id or "",
        headers=dict(message.headers),
        redelivered=bool(message.redelivered),
    )
