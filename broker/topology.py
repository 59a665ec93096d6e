"""RabbitMQ topology as hashable value objects (DESIGN.md §4), declared idempotently by both brokers."""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, replace
from typing import Any, Final, Literal

from contracts.errors import ConfigError, NotFound

ExchangeKind = Literal["topic", "fanout"]

NAMESPACE: Final = "fedbus"
DEFAULT_DELIVERY_LIMIT: Final = 5
DEFAULT_CLIENT_TTL_S: Final = 600.0
DEFAULT_INSPECT_MAX_LENGTH: Final = 10_000
# The dead-letter queue keeps the newest messages up to this many: junk on the broker cannot fill its disk.
DEFAULT_DEAD_LETTER_MAX_LENGTH: Final = 100_000
_NAME_PART = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")
_KEY = re.compile(r"^[0-9a-f]{32}$")


@dataclass(frozen=True, slots=True, kw_only=True)
class Exchange:
    """A durable exchange; `fanout` ignores routing keys."""

    name: str
    kind: ExchangeKind = "topic"
    durable: bool = True


@dataclass(frozen=True, slots=True, kw_only=True)
class Queue:
    """A queue, the exchange it is bound to, its binding patterns and its policy arguments."""

    name: str
    exchange: str
    bindings: tuple[str, ...]
    quorum: bool = False
    delivery_limit: int | None = None
    message_ttl_s: float | None = None
    max_length: int | None = None
    dead_letter_exchange: str | None = None

    def arguments(self) -> dict[str, Any]:
        """The `x-` arguments RabbitMQ declares the queue with."""
        args: dict[str, Any] = {"x-queue-type": "quorum" if self.quorum else "classic"}
        if self.delivery_limit is not None:
            args["x-delivery-limit"] = self.delivery_limit
        if self.message_ttl_s is not None:
            args["x-message-ttl"] = round(self.message_ttl_s * 1000)
        if self.max_length is not None:
            args["x-max-length"] = self.max_length
            args["x-overflow"] = "drop-head"
        if self.dead_letter_exchange is not None:
            args["x-dead-letter-exchange"] = self.dead_letter_exchange
        return args


@dataclass(frozen=True, slots=True, kw_only=True)
class Topology:
    """Every exchange and queue fedbus declares; per-client queues are made by `client_queue`."""

    events: Exchange
    dead: Exchange
    dead_letters: Queue
    aggregator: Queue
    coordinator: Queue
    inspect: Queue | None
    client_template: Queue
    # Readable copies: every published event again as JSON, on a fanout exchange of its own, into a ring
    # like `inspect` (whose messages are the msgpack envelopes the roles consume).
    inspect_copies: Exchange | None = None
    inspect_json: Queue | None = None

    @property
    def exchanges(self) -> tuple[Exchange, ...]:
        copies = () if self.inspect_copies is None else (self.inspect_copies,)
        return (self.events, self.dead, *copies)

    @property
    def queues(self) -> tuple[Queue, ...]:
        rings = tuple(q for q in (self.inspect, self.inspect_json) if q is not None)
        return (self.dead_letters, self.aggregator, self.coordinator, *rings)

    def client_queue(self, client_id: str, key: str = "") -> Queue:
        """The queue of one client worker: round.started, round.failed and run.completed, with a TTL.

        With `key` (see `queue_key`) its name holds a secret only that client knows: clients share one broker
        user, and a queue nobody else can name is one nobody else can read, purge or delete.
        """
        if not _NAME_PART.match(client_id):
            raise ConfigError("client_id", f"{client_id!r} is not a valid queue name part")
        if key and not _KEY.match(key):
            raise ConfigError("key", "must be 32 lowercase hex digits (queue_key)")
        suffix = f".{key}" if key else ""
        return replace(self.client_template, name=f"{self.client_template.name}.{client_id}{suffix}")

    def queue(self, name: str) -> Queue:
        """A declared queue by name (fixed or per-client)."""
        for queue in self.queues:
            if queue.name == name:
                return queue
        prefix = f"{self.client_template.name}."
        if name.startswith(prefix):
            return self.client_queue(name.removeprefix(prefix))
        raise NotFound(f"queue {name!r} is not in the topology")


def build_topology(
    *,
    namespace: str = NAMESPACE,
    delivery_limit: int = DEFAULT_DELIVERY_LIMIT,
    client_ttl_s: float = DEFAULT_CLIENT_TTL_S,
    inspect_max_length: int | None = DEFAULT_INSPECT_MAX_LENGTH,
    inspect_json: bool = True,
    dead_letter_max_length: int = DEFAULT_DEAD_LETTER_MAX_LENGTH,
) -> Topology:
    """The fedbus topology; `namespace` prefixes every name, `inspect_max_length=None` drops the rings.

    With the rings, `inspect_json` adds `<namespace>.inspect.json`: the same events as JSON, for people (the
    management UI's "Get messages" shows them as text), fed by the `<namespace>.inspect` fanout exchange."""
    if not _NAME_PART.match(namespace):
        raise ConfigError("namespace", f"{namespace!r} is not a valid name prefix")
    if delivery_limit < 1:
        raise ConfigError("delivery_limit", "must be at least 1")
    if client_ttl_s <= 0:
        raise ConfigError("client_ttl_s", "must be positive")
    if inspect_max_length is not None and inspect_max_length < 1:
        raise ConfigError("inspect_max_length", "must be at least 1")
    if dead_letter_max_length < 1:
        raise ConfigError("dead_letter_max_length", "must be at least 1")
    events = Exchange(name=f"{namespace}.events")
    dead = Exchange(name=f"{namespace}.dead", kind="fanout")

    def worker_queue(role: str, *keys: str) -> Queue:
        return Queue(
            name=f"{namespace}.{role}",
            exchange=events.name,
            bindings=keys,
            quorum=True,
            delivery_limit=delivery_limit,
            dead_letter_exchange=dead.name,
        )

    inspect = inspect_copies = inspect_ring_json = None
    if inspect_max_length is not None:
        inspect = Queue(
            name=f"{namespace}.inspect",
            exchange=events.name,
            bindings=("#",),
            max_length=inspect_max_length,
        )
        if inspect_json:
            inspect_copies = Exchange(name=f"{namespace}.inspect", kind="fanout")
            inspect_ring_json = replace(inspect, name=f"{namespace}.inspect.json", exchange=inspect_copies.name)
    client_template = replace(
        worker_queue("client", "round.started", "round.failed", "run.completed"),
        message_ttl_s=client_ttl_s,
    )
    return Topology(
        events=events,
        dead=dead,
        dead_letters=Queue(
            name=f"{namespace}.dead-letters", exchange=dead.name, bindings=("#",), max_length=dead_letter_max_length
        ),
        aggregator=worker_queue("aggregator", "run.created", "round.quorum_reached"),
        coordinator=worker_queue("coordinator", "model.initialized", "round.aggregated"),
        inspect=inspect,
        client_template=client_template,
        inspect_copies=inspect_copies,
        inspect_json=inspect_ring_json,
    )


DEFAULT: Final = build_topology()
AGGREGATOR_QUEUE: Final = DEFAULT.aggregator.name  # competing aggregators: RunCreated, QuorumReached
COORDINATOR_QUEUE: Final = DEFAULT.coordinator.name  # what wakes the coordinator: ModelInitialized, RoundAggregated


def client_queue(client_id: str, key: str = "") -> Queue:
    """The default topology's queue for `client_id` (`fedbus.client.<client_id>[.<key>]`)."""
    return DEFAULT.client_queue(client_id, key)


def queue_key(client_secret: str) -> str:
    """The part of a client's queue name derived from its client secret (128 bits: not guessable)."""
    return hashlib.sha256(b"fedbus client queue\0" + client_secret.encode()).hexdigest()[:32]


def topic_matches(pattern: str, routing_key: str) -> bool:
    """AMQP topic matching: `*` is exactly one word, `#` zero or more words."""
    return _match(tuple(pattern.split(".")), tuple(routing_key.split(".")))


def _match(pattern: tuple[str, ...], words: tuple[str, ...]) -> bool:
    if not pattern:
        return not words
    head, rest = pattern[0], pattern[1:]
    if head == "#":
        return any(_match(rest, words[i:]) for i in range(len(words) + 1))
    if not words:
        return False
    return (head == "*" or head == words[0]) and _match(rest, words[1:])
