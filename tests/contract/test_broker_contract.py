"""One broker contract, run against the in-memory twin and against a real RabbitMQ (fresh vhost)."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import Callable, Coroutine, Iterator
from typing import Any

import msgpack
import pytest

from broker.errors import Unroutable
from broker.in_memory_broker import InMemoryBroker
from broker.messages import QueuedMessage
from broker.topology import Topology, build_topology, topic_matches
from contracts.envelope import Envelope
from contracts.errors import TransientError
from contracts.event_codec import decode_envelope, event_to_dict
from contracts.events import (
    ClientRegistered,
    QuorumReached,
    RoundFailed,
    RoundStarted,
    RunCompleted,
    RunCreated,
)
from tests.support.brokers import OpenBroker, broker_opener
from tests.support.polling import eventually
from tests.support.rabbitmq import fresh_vhost


@pytest.fixture(scope="module")
def rabbitmq_url() -> Iterator[str]:
    with fresh_vhost("fedbus-contract") as url:
        yield url


@pytest.fixture(params=["memory", pytest.param("rabbitmq", marks=pytest.mark.integration)])
def open_broker(request: pytest.FixtureRequest) -> OpenBroker:
    return broker_opener(request.getfixturevalue("rabbitmq_url") if request.param == "rabbitmq" else None)


def run(scenario: Coroutine[Any, Any, None]) -> None:
    asyncio.run(asyncio.wait_for(scenario, timeout=30))


def fresh_topology(**options: Any) -> Topology:
    """A topology of its own per test, so tests sharing a vhost never see each other's messages."""
    return build_topology(namespace=f"t{uuid.uuid4().hex[:12]}", **options)


def quorum(run_id: str, round_: int = 1) -> Envelope:
    event = QuorumReached(run_id=run_id, round=round_, model_version=round_ - 1, update_ids=("u1",), partial=False)
    return Envelope(event=event)


def round_started(run_id: str) -> Envelope:
    event = RoundStarted(
        run_id=run_id,
        round=1,
        attempt=0,
        model_version=0,
        model_digest="d" * 64,
        selected=("a", "b"),
        deadline=1e9,
        train={"epochs": 1},
    )
    return Envelope(event=event)


def ids(messages: list[QueuedMessage]) -> list[str]:
    return [m.message_id for m in messages]


def test_declaring_the_topology_twice_is_harmless(open_broker: OpenBroker) -> None:
    async def scenario() -> None:
        topology = fresh_topology()
        async with open_broker(topology) as broker:
            await broker.declare()
            await broker.declare()
            first = await broker.ensure_client_queue("c1")
            second = await broker.ensure_client_queue("c1")
            envelope = Envelope(event=RunCreated(run_id="r1", config={}))

            await broker.publish(envelope)

            assert first == second == topology.client_queue("c1").name
            queued = await eventually(lambda: broker.peek(topology.aggregator.name), lambda m: len(m) == 1)
            assert ids(queued) == [envelope.event_id]

    run(scenario())


def test_confirmed_publish_is_consumed_and_copied_to_inspect_with_headers(open_broker: OpenBroker) -> None:
    async def scenario() -> None:
        topology = fresh_topology()
        async with open_broker(topology) as broker:
            received: list[Envelope] = []

            async def handler(envelope: Envelope) -> None:
                received.append(envelope)

            await broker.consume(topology.aggregator.name, handler)
            envelope = Envelope(event=quorum("run-7", 3).event, traceparent="00-" + "a" * 32 + "-" + "b" * 16 + "-01")

            await broker.publish(envelope)

            await eventually(lambda: _value(received), lambda r: len(r) == 1)
            assert received == [envelope]
            inspected = await eventually(lambda: broker.peek(topology.inspect.name), bool)  # type: ignore[union-attr]
            assert ids(inspected) == [envelope.event_id]
            assert inspected[0].routing_key == "round.quorum_reached"
            assert {k: inspected[0].headers[k] for k in ("run_id", "round", "traceparent")} == {
                "run_id": "run-7",
                "round": 3,
                "traceparent": envelope.traceparent,
            }

    run(scenario())


def test_every_published_event_has_a_json_copy_in_the_readable_inspect_ring(open_broker: OpenBroker) -> None:
    async def scenario() -> None:
        topology = fresh_topology()
        assert topology.inspect_json is not None
        async with open_broker(topology) as broker:
            envelopes = [quorum("run-8", 2), round_started("run-8")]

            for envelope in envelopes:
                await broker.publish(envelope)

            copies = await eventually(lambda: broker.peek(topology.inspect_json.name), lambda m: len(m) == 2)  # type: ignore[union-attr]
            assert ids(copies) == [e.event_id for e in envelopes]
            bodies = [json.loads(m.body) for m in copies]
            assert [(b["type"], b["event_id"]) for b in bodies] == [(e.type, e.event_id) for e in envelopes]
            assert bodies[0]["payload"] == event_to_dict(envelopes[0].event)
            assert bodies[1]["payload"]["selected"] == list(envelopes[1].event.selected)  # type: ignore[attr-defined]
            assert copies[0].headers["run_id"] == "run-8" and copies[0].routing_key == "round.quorum_reached"
            # The ring the roles' tests read keeps the msgpack envelopes, unchanged.
            inspected = await broker.peek(topology.inspect.name)  # type: ignore[union-attr]
            assert [decode_envelope(m.body) for m in inspected] == envelopes

    run(scenario())


def test_without_json_copies_the_topology_has_no_copy_exchange(open_broker: OpenBroker) -> None:
    async def scenario() -> None:
        topology = fresh_topology(inspect_json=False)
        assert topology.inspect_copies is None and topology.inspect_json is None
        async with open_broker(topology) as broker:
            await broker.publish(quorum("run-9"))
            assert len(await eventually(lambda: broker.peek(topology.inspect.name), bool)) == 1  # type: ignore[union-attr]

    run(scenario())


def test_round_events_reach_every_client_queue_and_only_those(open_broker: OpenBroker) -> None:
    async def scenario() -> None:
        topology = fresh_topology()
        async with open_broker(topology) as broker:
            queues = [await broker.ensure_client_queue(c) for c in ("alice", "bob")]
            for_clients = [
                round_started("r1"),
                Envelope(event=RoundFailed(run_id="r1", round=1, attempt=0, reason="deadline")),
                Envelope(event=RunCompleted(run_id="r1", reason="max_rounds", rounds=1, metrics={})),
            ]
            for envelope in [quorum("r1"), *for_clients]:
                await broker.publish(envelope)

            for name in queues:
                queued = await eventually(lambda n=name: broker.peek(n), lambda m: len(m) >= 3)
                assert ids(queued) == [e.event_id for e in for_clients]
            aggregator = await broker.peek(topology.aggregator.name)
            assert [m.routing_key for m in aggregator] == ["round.quorum_reached"]

    run(scenario())


def test_poison_message_is_dead_lettered_after_the_delivery_limit_while_others_flow(
    open_broker: OpenBroker,
) -> None:
    async def scenario() -> None:
        topology = fresh_topology(delivery_limit=2)
        async with open_broker(topology) as broker:
            attempts: list[str] = []
            handled: list[str] = []

            async def handler(envelope: Envelope) -> None:
                attempts.append(envelope.event_id)
                if envelope.run_id == "poison":
                    raise RuntimeError("this event breaks the handler every time")
                handled.append(envelope.event_id)

            poison, good = quorum("poison"), [quorum("ok-1"), quorum("ok-2")]
            await broker.consume(topology.aggregator.name, handler)

            for envelope in [poison, *good]:
                await broker.publish(envelope)

            dead = await eventually(lambda: broker.peek(topology.dead_letters.name), bool)
            await eventually(lambda: _value(handled), lambda h: len(h) == 2)
            assert ids(dead) == [poison.event_id]
            assert dead[0].death_reason == "delivery_limit"
            assert attempts.count(poison.event_id) == 3  # first delivery + delivery_limit redeliveries
            assert handled == [e.event_id for e in good]

    run(scenario())


def test_undecodable_bodies_go_straight_to_dead_letters(open_broker: OpenBroker) -> None:
    async def scenario() -> None:
        topology = fresh_topology()
        async with open_broker(topology) as broker:
            calls: list[str] = []

            async def handler(envelope: Envelope) -> None:
                calls.append(envelope.event_id)

            unknown_type = msgpack.packb(
                {"type": "Nope", "event_id": "x", "occurred_at": 1.0, "payload": {"run_id": "r"}}
            )
            await broker.consume(topology.aggregator.name, handler)
            good = Envelope(event=RunCreated(run_id="r1", config={}))

            await broker.publish_raw("run.created", b"\xc1 not msgpack", message_id="garbage")
            await broker.publish_raw("run.created", unknown_type, message_id="unknown-type")
            await broker.publish(good)

            await eventually(lambda: _value(calls), bool)
            dead = await eventually(lambda: broker.peek(topology.dead_letters.name), lambda m: len(m) == 2)
            assert calls == [good.event_id]
            assert ids(dead) == ["garbage", "unknown-type"]
            assert {m.death_reason for m in dead} == {"rejected"}

    run(scenario())


def test_transient_error_is_redelivered_then_acked(open_broker: OpenBroker) -> None:
    async def scenario() -> None:
        topology = fresh_topology()
        async with open_broker(topology) as broker:
            calls: list[str] = []

            async def handler(envelope: Envelope) -> None:
                calls.append(envelope.event_id)
                if len(calls) == 1:
                    raise TransientError("database briefly away")

            flaky, marker = quorum("r1"), quorum("r1", 2)
            await broker.consume(topology.aggregator.name, handler, prefetch=1)

            await broker.publish(flaky)
            await eventually(lambda: _value(calls), lambda c: len(c) == 2)
            # prefetch 1: the marker is delivered only once the flaky message was acked, never again after
            await broker.publish(marker)

            await eventually(lambda: _value(calls), lambda c: len(c) == 3)
            assert calls == [flaky.event_id, flaky.event_id, marker.event_id]
            assert await broker.peek(topology.dead_letters.name) == []

    run(scenario())


def test_competing_consumers_handle_each_message_once(open_broker: OpenBroker) -> None:
    async def scenario() -> None:
        topology = fresh_topology()
        async with open_broker(topology) as broker:
            handled: list[tuple[str, str]] = []

            def consumer(name: str) -> Callable[[Envelope], Coroutine[Any, Any, None]]:
                async def handler(envelope: Envelope) -> None:
                    await asyncio.sleep(0.01)  # hold the prefetch slot so the other consumer gets work
                    handled.append((name, envelope.event_id))

                return handler

            await broker.consume(topology.aggregator.name, consumer("first"), prefetch=1)
            await broker.consume(topology.aggregator.name, consumer("second"), prefetch=1)
            published = [quorum("r1", n) for n in range(1, 11)]

            for envelope in published:
                await broker.publish(envelope)

            await eventually(lambda: _value(handled), lambda h: len(h) >= len(published))
            assert sorted(event_id for _, event_id in handled) == sorted(e.event_id for e in published)
            assert {name for name, _ in handled} == {"first", "second"}

    run(scenario())


def test_unroutable_publish_raises(open_broker: OpenBroker) -> None:
    async def scenario() -> None:
        async with open_broker(fresh_topology(inspect_max_length=None)) as broker:
            with pytest.raises(Unroutable):
                await broker.publish(Envelope(event=ClientRegistered(client_id="c1")))
            with pytest.raises(Unroutable):
                await broker.publish_raw("nobody.listens", b"x", message_id="m1")

    run(scenario())


def test_expired_client_messages_are_dead_lettered(open_broker: OpenBroker) -> None:
    async def scenario() -> None:
        topology = fresh_topology(client_ttl_s=0.2)
        async with open_broker(topology) as broker:
            await broker.ensure_client_queue("late")
            envelope = round_started("r1")

            await broker.publish(envelope)

            dead = await eventually(lambda: broker.peek(topology.dead_letters.name), bool)
            assert ids(dead) == [envelope.event_id]
            assert dead[0].death_reason == "expired"
            assert await broker.peek(topology.client_queue("late").name) == []

    run(scenario())


def test_the_dead_letter_queue_keeps_only_the_newest_messages(open_broker: OpenBroker) -> None:
    """Junk published at the broker is dead-lettered, and the dead letters cannot grow without bound."""

    async def scenario() -> None:
        topology = fresh_topology(dead_letter_max_length=3)
        async with open_broker(topology) as broker:

            async def handler(envelope: Envelope) -> None:
                return None

            await broker.consume(topology.aggregator.name, handler)
            for n in range(6):
                await broker.publish_raw("run.created", b"\xc1 junk", message_id=f"junk-{n}")

            dead = await eventually(
                lambda: broker.peek(topology.dead_letters.name), lambda m: ids(m) == ["junk-3", "junk-4", "junk-5"]
            )
            assert len(dead) == 3

    run(scenario())


def test_inspect_ring_keeps_only_the_newest_messages(open_broker: OpenBroker) -> None:
    async def scenario() -> None:
        topology = fresh_topology(inspect_max_length=3)
        async with open_broker(topology) as broker:
            published = [quorum("r1", n) for n in range(1, 6)]

            for envelope in published:
                await broker.publish(envelope)

            inspected = await broker.peek(topology.inspect.name)  # type: ignore[union-attr]
            assert ids(inspected) == [e.event_id for e in published[-3:]]

    run(scenario())


async def _value(items: list[Any]) -> list[Any]:
    return list(items)


def test_in_memory_ttl_follows_the_injected_clock() -> None:
    async def scenario() -> None:
        now = [100.0]
        topology = fresh_topology(client_ttl_s=60.0)
        broker = InMemoryBroker(topology=topology, clock=lambda: now[0])
        queue = await broker.ensure_client_queue("c1")
        await broker.publish(round_started("r1"))

        now[0] += 59.0
        kept = broker.messages(queue)
        now[0] += 1.0
        expired = broker.messages(queue)

        assert (len(kept), expired) == (1, [])
        assert [m.death_reason for m in broker.messages(topology.dead_letters.name)] == ["expired"]
        await broker.close()

    run(scenario())


@pytest.mark.parametrize(
    ("pattern", "key", "matches"),
    [
        ("#", "round.started", True),
        ("#", "x", True),
        ("round.*", "round.started", True),
        ("round.*", "round.started.late", False),
        ("round.#", "round", True),
        ("*.started", "round.started", True),
        ("*", "round.started", False),
        ("run.created", "run.created", True),
        ("run.created", "run.completed", False),
        ("a.#.z", "a.b.c.z", True),
        ("a.#.z", "a.z", True),
        ("a.#.z", "a.b.c", False),
    ],
)
def test_topic_patterns_match_like_rabbitmq(pattern: str, key: str, matches: bool) -> None:
    assert topic_matches(pattern, key) is matches
