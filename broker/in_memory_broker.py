"""In-memory twin of the RabbitMQ broker: the same topology, routing, dispositions, delivery limits,
dead-lettering, TTL and drop-head, in one event loop. The embedded `fedbus run` uses it for real.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Mapping
from typing import Any

from broker.disposition import Disposition, settle
from broker.errors import BrokerUnavailable, Unroutable
from broker.in_memory_queue import MemoryQueue, StoredMessage
from broker.messages import DEATH_REASON_HEADER, QueuedMessage, headers_for
from broker.topology import DEFAULT, Exchange, Queue, Topology, topic_matches
from contracts.envelope import Envelope
from contracts.errors import ConfigError, NotFound
from contracts.event_codec import encode_envelope, envelope_to_json
from contracts.ports import Handler


class InMemoryBroker:
    """Publisher and Subscriber over in-process queues; declares `topology` on construction."""

    def __init__(self, *, topology: Topology = DEFAULT, clock: Callable[[], float] = time.monotonic) -> None:
        self._topology = topology
        self._clock = clock
        self._exchanges: dict[str, Exchange] = {}
        self._queues: dict[str, MemoryQueue] = {}
        self._consumers: set[_Consumer] = set()
        self._closed = False
        self._declare_all()

    @property
    def topology(self) -> Topology:
        return self._topology

    async def declare(self) -> None:
        """Declare the topology again; harmless when it already exists with the same arguments."""
        self._declare_all()

    async def ensure_client_queue(self, client_id: str, key: str = "") -> str:
        """Declare the queue of `client_id` and return its name."""
        spec = self._topology.client_queue(client_id, key)
        self._declare_queue(spec)
        return spec.name

    async def publish(self, envelope: Envelope) -> None:
        """Route the encoded envelope by its routing key; raises Unroutable when no queue binds it. With the
        topology's JSON inspect ring, a JSON copy goes there too."""
        headers = headers_for(envelope)
        await self.publish_raw(
            envelope.routing_key, encode_envelope(envelope), message_id=envelope.event_id, headers=headers
        )
        copies = self._topology.inspect_copies
        if copies is not None:
            copy = envelope_to_json(envelope)
            for queue in self._route(copies.name, envelope.routing_key):
                message = StoredMessage(
                    routing_key=envelope.routing_key,
                    body=copy,
                    message_id=envelope.event_id,
                    headers=dict(headers),
                    enqueued_at=self._clock(),
                )
                self._push(queue, message)

    async def publish_raw(
        self,
        routing_key: str,
        body: bytes,
        *,
        message_id: str,
        headers: Mapping[str, Any] | None = None,
    ) -> None:
        """Publish raw bytes on the events exchange (tests, poison messages)."""
        if self._closed:
            raise BrokerUnavailable("in-memory broker is closed")
        targets = self._route(self._topology.events.name, routing_key)
        if not targets:
            raise Unroutable(f"no queue is bound to {routing_key!r}")
        for queue in targets:
            self._push(
                queue,
                StoredMessage(
                    routing_key=routing_key,
                    body=body,
                    message_id=message_id,
                    headers=dict(headers or {}),
                    enqueued_at=self._clock(),
                ),
            )

    async def consume(self, queue: str, handler: Handler, *, prefetch: int = 1) -> _Consumer:
        """Run `handler` on the queue's messages, at most `prefetch` at a time, until cancelled."""
        if prefetch < 1:
            raise ConfigError("prefetch", "must be at least 1")
        if self._closed:
            raise BrokerUnavailable("in-memory broker is closed")
        consumer = _Consumer(self, self._queue(queue), handler, prefetch)
        self._consumers.add(consumer)
        return consumer

    def messages(self, queue: str) -> list[QueuedMessage]:
        """The ready messages of `queue`, oldest first (in-flight ones are not listed)."""
        self._expire_all()
        return self._queue(queue).snapshot()

    async def peek(self, queue: str) -> list[QueuedMessage]:
        """Same as `messages`, with the RabbitMQ adapter's signature."""
        return self.messages(queue)

    async def close(self) -> None:
        """Cancel every consumer (in-flight messages go back to their queues) and refuse new work."""
        self._closed = True
        for consumer in list(self._consumers):
            await consumer.cancel()

    def _declare_all(self) -> None:
        for exchange in self._topology.exchanges:
            known = self._exchanges.setdefault(exchange.name, exchange)
            if known != exchange:
                raise ConfigError("exchange", f"{exchange.name} exists with other arguments")
        for spec in self._topology.queues:
            self._declare_queue(spec)

    def _declare_queue(self, spec: Queue) -> None:
        known = self._queues.get(spec.name)
        if known is None:
            self._queues[spec.name] = MemoryQueue(spec, self._clock)
        elif known.spec != spec:
            raise ConfigError("queue", f"{spec.name} exists with other arguments")

    def _queue(self, name: str) -> MemoryQueue:
        try:
            return self._queues[name]
        except KeyError:
            raise NotFound(f"queue {name!r} is not declared") from None

    def _route(self, exchange: str, routing_key: str) -> list[MemoryQueue]:
        kind = self._exchanges[exchange].kind
        return [
            queue
            for queue in self._queues.values()
            if queue.spec.exchange == exchange
            and (kind == "fanout" or any(topic_matches(b, routing_key) for b in queue.spec.bindings))
        ]

    def _push(self, queue: MemoryQueue, message: StoredMessage) -> None:
        for dropped in queue.push(message):
            self._dead_letter(queue, dropped, "maxlen")

    def _expire_all(self) -> None:
        for queue in list(self._queues.values()):
            for message in queue.expire():
                self._dead_letter(queue, message, "expired")

    def _next(self, queue: MemoryQueue) -> StoredMessage | None:
        self._expire_all()
        return queue.take()

    def _settle(self, queue: MemoryQueue, message: StoredMessage, disposition: Disposition) -> None:
        if disposition is Disposition.DEAD_LETTER:
            self._dead_letter(queue, message, "rejected")
        elif disposition is Disposition.REQUEUE:
            self._return(queue, message)

    def _return(self, queue: MemoryQueue, message: StoredMessage) -> None:
        # Like a quorum queue: `delivery_limit` requeues are allowed, the next one dead-letters.
        message.returns += 1
        limit = queue.spec.delivery_limit
        if limit is not None and message.returns > limit:
            self._dead_letter(queue, message, "delivery_limit")
            return
        if queue.spec.quorum:
            message.headers["x-delivery-count"] = message.returns
        queue.push_front(message)

    def _dead_letter(self, queue: MemoryQueue, message: StoredMessage, reason: str) -> None:
        exchange = queue.spec.dead_letter_exchange
        if exchange is None or exchange not in self._exchanges:
            return
        headers = {k: v for k, v in message.headers.items() if k != "x-delivery-count"}
        headers.setdefault(DEATH_REASON_HEADER, reason)
        headers.setdefault("x-first-death-queue", queue.spec.name)
        for target in self._route(exchange, message.routing_key):
            self._push(
                target,
                StoredMessage(
                    routing_key=message.routing_key,
                    body=message.body,
                    message_id=message.message_id,
                    headers=dict(headers),
                    enqueued_at=self._clock(),
                ),
            )


class _Consumer:
    """A consumer task that takes a message only when one of its `prefetch` slots is free."""

    def __init__(self, broker: InMemoryBroker, queue: MemoryQueue, handler: Handler, prefetch: int) -> None:
        self._broker = broker
        self._queue = queue
        self._handler = handler
        self._slots = asyncio.Semaphore(prefetch)
        self._in_flight: set[asyncio.Task[Disposition]] = set()
        self._loop_task = asyncio.get_running_loop().create_task(self._run())

    async def cancel(self) -> None:
        """Stop taking messages; cancel in-flight handlers, whose messages are requeued."""
        tasks = [self._loop_task, *self._in_flight]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._broker._consumers.discard(self)

    async def _run(self) -> None:
        while True:
            await self._slots.acquire()
            message = self._broker._next(self._queue)
            while message is None:
                await self._queue.wait()
                message = self._broker._next(self._queue)
            self._start(message)

    def _start(self, message: StoredMessage) -> None:
        message.delivered = True
        task = asyncio.create_task(
            settle(self._handler, message.body, message_id=message.message_id, queue=self._queue.spec.name)
        )
        self._in_flight.add(task)
        task.add_done_callback(lambda done: self._finish(done, message))

    def _finish(self, task: asyncio.Task[Disposition], message: StoredMessage) -> None:
        self._in_flight.discard(task)
        self._slots.release()
        # A cancelled task may never have started its handler: either way the message goes back.
        if task.cancelled() or task.exception() is not None:
            self._broker._return(self._queue, message)
        else:
            self._broker._settle(self._queue, message, task.result())
