"""RabbitMQ adapter on aio-pika: confirmed, mandatory, timed publishes; manual-ack consumers that resume
after a reconnect; the disposition table decides ack / requeue / dead-letter.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any

import aio_pika
from aio_pika.abc import AbstractChannel, AbstractExchange, AbstractRobustConnection
from aio_pika.exceptions import (
    CONNECTION_EXCEPTIONS,
    ChannelPreconditionFailed,
    DeliveryError,
    PublishError,
)

from broker.connection import connect_robust
from broker.errors import BrokerUnavailable, PublishTimeout, Unroutable
from broker.messages import CONTENT_TYPE, JSON_CONTENT_TYPE, QueuedMessage, headers_for
from broker.rabbitmq_consumer import RabbitConsumer, snapshot
from broker.topology import DEFAULT, Queue, Topology
from contracts.envelope import Envelope
from contracts.errors import ConfigError, NotFound
from contracts.event_codec import encode_envelope, envelope_to_json
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
        self._copies: AbstractExchange | None = None  # where readable JSON copies go (the inspect ring's)
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
        declare_topology: bool = True,
    ) -> RabbitBroker:
        """Connect (retrying connection errors), open a confirming channel and declare `topology`.

        `declare_topology=False` is for least-privileged users (clients): the shared exchanges and queues
        are assumed to exist and only `ensure_client_queue` declares anything.
        """
        if publish_timeout <= 0:
            raise ConfigError("publish_timeout", "must be positive")
        if prefetch < 1:
            raise ConfigError("prefetch", "must be at least 1")
        connection = await connect_robust(url, attempts=connect_attempts, reconnect_interval=reconnect_interval)
        try:
            channel = await connection.channel(publisher_confirms=True, on_return_raises=True)
            broker = cls(
                connection,
                channel,
                topology=topology,
                publish_timeout=publish_timeout,
                prefetch=prefetch,
            )
            if declare_topology:
                await broker.declare()
            else:
                broker._exchange = await channel.get_exchange(topology.events.name, ensure=False)
        except BaseException:
            await connection.close()
            raise
        return broker

    @property
    def topology(self) -> Topology:
        return self._topology

    async def declare(self) -> None:
        """Declare exchanges, queues and bindings; idempotent, and redone by the channel on reconnect."""
        with _translated("declare the topology"):
            exchanges = {
                spec.name: await self._channel.declare_exchange(
                    spec.name, aio_pika.ExchangeType(spec.kind), durable=spec.durable
                )
                for spec in self._topology.exchanges
            }
            self._exchange = exchanges[self._topology.events.name]
            if self._topology.inspect_copies is not None:
                self._copies = exchanges[self._topology.inspect_copies.name]
            for spec in self._topology.queues:
                await self._declare_queue(spec)

    async def ensure_client_queue(self, client_id: str, key: str = "") -> str:
        """Declare and bind the queue of `client_id`; returns its name."""
        spec = self._topology.client_queue(client_id, key)
        with _translated(f"declare {spec.name}"):
            await self._declare_queue(spec)
        return spec.name

    async def publish(self, envelope: Envelope) -> None:
        """Publish with confirm and mandatory routing; Unroutable, PublishTimeout or BrokerUnavailable.

        With the topology's JSON inspect ring, a JSON copy goes out beside it (confirmed in the same round trip);
        a copy that fails is logged and never fails the publish."""
        headers = headers_for(envelope)
        sent = self._publish(
            envelope.routing_key,
            encode_envelope(envelope),
            message_id=envelope.event_id,
            headers=headers,
            type_name=envelope.type,
        )
        if self._copies is None:
            await sent
            return
        copy = self._publish(
            envelope.routing_key,
            envelope_to_json(envelope),
            message_id=envelope.event_id,
            headers=headers,
            type_name=envelope.type,
            exchange=self._copies,
            content_type=JSON_CONTENT_TYPE,
        )
        outcome, copied = await asyncio.gather(sent, copy, return_exceptions=True)
        if isinstance(copied, Exception):
            log.warning("no JSON copy of %s in the inspect ring: %s", envelope.type, copied)
        if isinstance(outcome, BaseException):
            raise outcome

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
        with _translated(f"consume {queue}"):
            channel = await self._connection.channel()
            await channel.set_qos(prefetch_count=prefetch)
            amqp_queue = await channel.declare_queue(spec.name, durable=True, arguments=spec.arguments())
            consumer = RabbitConsumer(channel, amqp_queue, handler, timeout=self._publish_timeout)
            await consumer.start()
        self._consumers.add(consumer)
        return consumer

    async def peek(self, queue: str) -> list[QueuedMessage]:
        """Read the ready messages of `queue` without removing them (they come back marked redelivered)."""
        spec = self._spec(queue)
        with _translated(f"peek {queue}"):
            channel = await self._connection.channel()
            try:
                amqp_queue = await channel.get_queue(spec.name, ensure=False)
                found: list[QueuedMessage] = []
                while (message := await amqp_queue.get(no_ack=False, fail=False)) is not None:
                    found.append(snapshot(message))
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
        exchange: AbstractExchange | None = None,
        content_type: str = CONTENT_TYPE,
    ) -> None:
        """Confirmed; mandatory on the events exchange, not on another (`exchange`: the inspect copies')."""
        target = self._exchange if exchange is None else exchange
        if target is None:
            raise BrokerUnavailable("topology not declared")
        message = aio_pika.Message(
            body,
            message_id=message_id,
            type=type_name,
            content_type=content_type,
            delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
            headers=headers,
        )
        try:
            async with asyncio.timeout(self._publish_timeout):
                await target.publish(message, routing_key, mandatory=exchange is None)
        except TimeoutError as exc:
            raise PublishTimeout(f"no confirm for {routing_key} within {self._publish_timeout}s") from exc
        except PublishError as exc:
            raise Unroutable(f"no queue is bound to {routing_key!r}") from exc
        except DeliveryError as exc:
            raise BrokerUnavailable(f"broker refused {routing_key}: {exc!r}") from exc
        except CONNECTION_EXCEPTIONS as exc:
            raise BrokerUnavailable(f"cannot publish {routing_key}: {exc!r}") from exc


@contextmanager
def _translated(action: str) -> Iterator[None]:
    """The one place where aio-pika's declaration and channel errors become the layer's errors."""
    try:
        yield
    except ChannelPreconditionFailed as exc:
        raise ConfigError("topology", f"cannot {action}: exists with other arguments ({exc})") from exc
    except CONNECTION_EXCEPTIONS as exc:
        raise BrokerUnavailable(f"cannot {action}: {exc!r}") from exc
