"""RabbitMQ adapter on aio-pika: confirmed, mandatory, timed publishes; manual-ack consumers that resume
after a reconnect; the disposition table decides ack / requeue / dead-letter.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping
from typing import Any

import aio_pika
from aio_pika.abc import (
    AbstractChannel,
    AbstractExchange,
    AbstractIncomingMessage,
    AbstractQueue,
    AbstractRobustConnection,
)
from aio_pika.exceptions import CONNECTION_EXCEPTIONS, DeliveryError, PublishError

from broker.connection import connect_robust
from broker.disposition import Disposition, settle
from broker.errors import BrokerUnavailable, PublishTimeout, Unroutable
from broker.messages import CONTENT_TYPE, QueuedMessage, headers_for
from broker.topology import DEFAULT, Queue, Topology
from contracts.envelope import Envelope
from contracts.errors import ConfigError, NotFound
from contracts.event_codec import encode_envelope
from contracts.ports import Handler

log = logging.getLogger(__name__)


class RabbitBroker:
    """Publisher and Subscriber on RabbitMQ; build it with `await RabbitBroker.connect(url)`."""

    def __init__(
        self,
        connection: AbstractRobustConnection,
        channel: AbstractChannel,
        *,
        topology: Topology,
        publish_timeout: float,
        prefetch: int,
    ) -> None:
        self._connection = connection
        self._channel = channel
        self._topology = topology
        self._publish_timeout = publish_timeout
        self._prefetch = prefetch
        self._declared: dict[str, Queue] = {}
        self._exchange: AbstractExchange | None = None
        self._consumers: set[RabbitConsumer] = set()

    @classmethod
    async def connect(
        cls,
        url: str,
        *,
        topology: Topology = DEFAULT,
        publish_timeout: float = 10.0,
        prefetch: int = 1,
        reconnect_interval: float = 2.0,
        connect_attempts: int = 5,
    ) -> RabbitBroker:
        """Connect (retrying connection errors), open a confirming channel and declare `topology`."""
        if publish_timeout <= 0:
            raise ConfigError("publish_timeout", "must be positive")
        if prefetch < 1:
            raise ConfigError("prefetch", "must be at least 1")
        connection = await connect_robust(
            url, attempts=connect_attempts, reconnect_interval=reconnect_interval
        )
        try:
            channel = await connection.channel(publisher_confirms=True, on_return_raises=True)
            broker = cls(
                connection,
                channel,
                topology=topology,
                publish_timeout=publish_timeout,
                prefetch=prefetch,
            )
            await broker.declare()
        except BaseException:
            await connection.close()
            raise
        return broker

    @property
    def topology(self) -> Topology:
        return self._topology

    async def declare(self) -> None:
        """Declare exchanges, queues and bindings; idempotent, and redone by the channel on reconnect."""
        exchanges = {
            spec.name: await self._channel.declare_exchange(
                spec.name, aio_pika.ExchangeType(spec.kind), durable=spec.durable
            )
            for spec in self._topology.exchanges
        }
        self._exchange = exchanges[self._topology.events.name]
        for spec in self._topology.queues:
            await self._declare_queue(spec)

    async def ensure_client_queue(self, client_id: str) -> str:
        """Declare and bind the queue of `client_id`; returns its name."""
        spec = self._topology.client_queue(client_id)
        await self._declare_queue(spec)
        return spec.name

    async def publish(self, envelope: Envelope) -> None:
        """Publish with confirm and mandatory routing; Unroutable, PublishTimeout or BrokerUnavailable."""
        await self._publish(
            envelope.routing_key,
            encode_envelope(envelope),
            message_id=envelope.event_id,
            headers=headers_for(envelope),
            type_name=envelope.type,
        )

    async def publish_raw(
        self,
        routing_key: str,
        body: bytes,
        *,
        message_id: str,
        headers: Mapping[str, Any] | None = None,
    ) -> None:
        """Publish raw bytes on the events exchange (tests, poison messages)."""
        await self._publish(routing_key, body, message_id=message_id, headers=dict(headers or {}))

    async def consume(self, queue: str, handler: Handler, *, prefetch: int | None = None) -> RabbitConsumer:
        """Consume a declared queue on a channel of its own with manual acks; resumes after reconnects."""
        prefetch = self._prefetch if prefetch is None else prefetch
        if prefetch < 1:
            raise ConfigError("prefetch", "must be at least 1")
        spec = self._spec(queue)
        try:
            channel = await self._connection.channel()
            await channel.set_qos(prefetch_count=prefetch)
            amqp_queue = await channel.declare_queue(spec.name, durable=True, arguments=spec.arguments())
            consumer = RabbitConsumer(channel, amqp_queue, handler)
            await consumer.start()
        except CONNECTION_EXCEPTIONS as exc:
            raise BrokerUnavailable(f"cannot consume {queue}: {exc!r}") from exc
        self._consumers.add(consumer)
        return consumer

    async def peek(self, queue: str) -> list[QueuedMessage]:
        """Read the ready messages of `queue` without removing them (they come back marked redelivered)."""
        spec = self._spec(queue)
        channel = await self._connection.channel()
        try:
            amqp_queue = await channel.get_queue(spec.name, ensure=False)
            found: list[QueuedMessage] = []
            while (message := await amqp_queue.get(no_ack=False, fail=False)) is not None:
                found.append(_snapshot(message))
            return found
        finally:
            await channel.close()  # closing without acks requeues everything we got

    async def close(self) -> None:
        """Cancel consumers (unacked messages are requeued) and close the connection."""
        for consumer in list(self._consumers):
            await consumer.cancel()
        self._consumers.clear()
        await self._connection.close()

    def _spec(self, queue: str) -> Queue:
        try:
            return self._declared[queue]
        except KeyError:
            raise NotFound(f"queue {queue!r} is not declared") from None

    async def _declare_queue(self, spec: Queue) -> None:
        queue = await self._channel.declare_queue(spec.name, durable=True, arguments=spec.arguments())
        for pattern in spec.bindings:
            await queue.bind(spec.exchange, routing_key=pattern)
        self._declared[spec.name] = spec

    async def _publish(
        self,
        routing_key: str,
        body: bytes,
        *,
        message_id: str,
        headers: dict[str, Any],
        type_name: str | None = None,
    ) -> None:
        if self._exchange is None:
            raise BrokerUnavailable("topology not declared")
        message = aio_pika.Message(
            body,
            message_id=message_id,
            type=type_name,
            content_type=CONTENT_TYPE,
            delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
            headers=headers,
        )
        try:
            async with asyncio.timeout(self._publish_timeout):
                await self._exchange.publish(message, routing_key, mandatory=True)
        except TimeoutError as exc:
            raise PublishTimeout(f"no confirm for {routing_key} within {self._publish_timeout}s") from exc
        except PublishError as exc:
            raise Unroutable(f"no queue is bound to {routing_key!r}") from exc
        except DeliveryError as exc:
            raise BrokerUnavailable(f"broker refused {routing_key}: {exc!r}") from exc
        except CONNECTION_EXCEPTIONS as exc:
            raise BrokerUnavailable(f"cannot publish {routing_key}: {exc!r}") from exc


class RabbitConsumer:
    """One consumer on its own channel; settles each message only after its handler finished."""

    def __init__(self, channel: AbstractChannel, queue: AbstractQueue, handler: Handler) -> None:
        self._channel = channel
        self._queue = queue
        self._handler = handler
        self._tag: str | None = None
        self._in_flight: set[asyncio.Task[Any]] = set()

    async def start(self) -> None:
        self._tag = await self._queue.consume(self._on_message, no_ack=False)

    async def cancel(self) -> None:
        """Stop deliveries, cancel running handlers and close the channel, which requeues their messages."""
        if self._tag is not None:
            try:
                await self._queue.cancel(self._tag)
            except CONNECTION_EXCEPTIONS as exc:
                log.info("cancelling consumer on %s: %r", self._queue.name, exc)
            self._tag = None
        tasks = list(self._in_flight)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if not self._channel.is_closed:
            await self._channel.close()

    async def _on_message(self, message: AbstractIncomingMessage) -> None:
        task = asyncio.current_task()
        if task is not None:
            self._in_flight.add(task)
        try:
            disposition = await settle(
                self._handler, message.body, message_id=message.message_id or "", queue=self._queue.name
            )
            await _apply(message, disposition)
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


def _snapshot(message: AbstractIncomingMessage) -> QueuedMessage:
    return QueuedMessage(
        routing_key=message.routing_key or "",
        body=message.body,
        message_id=message.message_id or "",
        headers=dict(message.headers),
        redelivered=bool(message.redelivered),
    )
