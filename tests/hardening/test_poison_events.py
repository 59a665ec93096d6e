"""Malformed and unknown events go to the dead-letter queue, on the in-memory twin and on a real RabbitMQ
(fresh vhost), while valid events published between them keep reaching the handler in order."""

from __future__ import annotations

import asyncio
import random
import uuid
from collections.abc import Coroutine, Iterator
from typing import Any

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from broker.disposition import Disposition, settle
from broker.topology import build_topology
from contracts.envelope import Envelope
from contracts.event_codec import encode_envelope, event_to_dict
from contracts.events import QuorumReached, RunCreated
from tests.hardening.tally import Tally
from tests.support.brokers import OpenBroker, broker_opener
from tests.support.polling import eventually
from tests.support.rabbitmq import fresh_vhost

TALLY = Tally("poison_events")


def body(type_name: str, payload: Any, **envelope: Any) -> bytes:
    fields = {"type": type_name, "event_id": uuid.uuid4().hex, "occurred_at": 1.0, "payload": payload, **envelope}
    packed: bytes = msgpack.packb(fields, use_bin_type=True)
    return packed


def poisons() -> list[tuple[str, bytes]]:
    """(kind, body) of every malformed message published; none of them may reach a handler."""
    quorum = event_to_dict(QuorumReached(run_id="r", round=1, model_version=0, update_ids=("u",), partial=False))
    rng = random.Random(7)
    return [
        ("garbage_bytes", b"\xc1 not msgpack"),
        ("garbage_bytes", bytes(rng.randrange(256) for _ in range(64))),
        ("garbage_bytes", b""),
        ("not_a_map", msgpack.packb([1, 2, 3])),
        ("unknown_type", body("RunExploded", {"run_id": "r"})),
        ("unknown_type", body("__import__", {"name": "os"})),
        ("missing_field", body("QuorumReached", {k: v for k, v in quorum.items() if k != "update_ids"})),
        ("missing_field", body("RunCreated", {"run_id": "r"})),
        ("wrong_field_type", body("QuorumReached", {**quorum, "round": "one"})),
        ("wrong_field_type", body("QuorumReached", {**quorum, "update_ids": [1, 2]})),
        ("wrong_field_type", body("RunCreated", {"run_id": 5, "config": {}})),
        ("unexpected_field", body("RunCreated", {"run_id": "r", "config": {}, "pickle": b"cos\nsystem"})),
        ("bad_envelope", body("RunCreated", {"run_id": "r", "config": {}}, occurred_at="yesterday")),
        ("bad_envelope", body("RunCreated", {"run_id": "r", "config": {}}, traceparent=42)),
    ]


@pytest.fixture(scope="module")
def rabbitmq_url() -> Iterator[str]:
    with fresh_vhost("fedbus-hardening") as url:
        yield url


@pytest.fixture(params=["memory", pytest.param("rabbitmq", marks=pytest.mark.integration)])
def open_broker(request: pytest.FixtureRequest) -> OpenBroker:
    return broker_opener(request.getfixturevalue("rabbitmq_url") if request.param == "rabbitmq" else None)


def run(scenario: Coroutine[Any, Any, None]) -> None:
    asyncio.run(asyncio.wait_for(scenario, timeout=45))


async def _value(items: list[Any]) -> list[Any]:
    return list(items)


def test_poison_events_are_dead_lettered_while_valid_ones_keep_flowing(open_broker: OpenBroker) -> None:
    async def scenario() -> None:
        topology = build_topology(namespace=f"h{uuid.uuid4().hex[:12]}")
        async with open_broker(topology) as broker:
            handled: list[Envelope] = []

            async def handler(envelope: Envelope) -> None:
                handled.append(envelope)

            await broker.consume(topology.aggregator.name, handler)
            valid: list[Envelope] = []
            poisoned: list[str] = []
            for index, (kind, payload) in enumerate(poisons()):
                message_id = f"poison-{index}-{kind}"
                await broker.publish_raw("run.created", payload, message_id=message_id)
                poisoned.append(message_id)
                envelope = Envelope(event=RunCreated(run_id=f"ok-{index}", config={}))
                await broker.publish(envelope)
                valid.append(envelope)
                TALLY.add(kind, "dead_letter")

            await eventually(lambda: _value(handled), lambda h: len(h) >= len(valid))
            dead = await eventually(lambda: broker.peek(topology.dead_letters.name), lambda m: len(m) >= len(poisoned))
            assert handled == valid
            assert sorted(m.message_id for m in dead) == sorted(poisoned)
            assert {m.death_reason for m in dead} == {"rejected"}
            assert await broker.peek(topology.aggregator.name) == []

    run(scenario())


@settings(max_examples=150, deadline=None)
@given(
    data=st.one_of(
        st.binary(max_size=256),
        st.recursive(
            st.none()
            | st.booleans()
            | st.integers(-(2**63), 2**64 - 1)
            | st.floats()
            | st.text(max_size=8)
            | st.binary(max_size=8),
            lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
            max_leaves=12,
        ).map(lambda value: msgpack.packb(value, use_bin_type=True)),
        st.builds(
            lambda type_name, payload: body(type_name, payload),
            st.sampled_from(["RunCreated", "QuorumReached", "RoundStarted", "UpdateAccepted", "Nope"]),
            st.dictionaries(
                st.sampled_from(["run_id", "round", "config", "update_ids", "partial", "model_version", "x"]),
                st.none()
                | st.integers(-(2**63), 2**63 - 1)
                | st.text(max_size=4)
                | st.lists(st.text(max_size=3), max_size=2),
            ),
        ),
    )
)
def test_any_body_is_either_handled_or_dead_lettered_never_an_exception(data: bytes) -> None:
    async def handler(envelope: Envelope) -> None:
        assert encode_envelope(envelope)  # a decoded envelope re-encodes

    disposition = asyncio.run(settle(handler, data, message_id="m", queue="q"))

    TALLY.add("random_body", disposition.value)
    assert disposition in (Disposition.ACK, Disposition.DEAD_LETTER)


def test_zz_write_the_tally() -> None:
    print("\n" + TALLY.table())
    assert TALLY.write().exists()
