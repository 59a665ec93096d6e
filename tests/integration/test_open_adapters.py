"""Adapters chosen from URLs: each scheme opens the real component, and a refused URL never shows its password.

The in-memory and SQLite cases need nothing running; PostgreSQL (a fresh database) and RabbitMQ (a fresh
vhost) are marked integration and skip when unreachable unless FEDBUS_REQUIRE_SERVICES=1.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine, Iterator
from pathlib import Path
from typing import Any

import pytest

from broker.broker_url import open_broker
from broker.in_memory_broker import InMemoryBroker
from broker.rabbitmq import RabbitBroker
from broker.topology import AGGREGATOR_QUEUE
from contracts.envelope import Envelope
from contracts.errors import ConfigError
from contracts.events import QuorumReached
from persistence.event_log_url import open_event_log
from persistence.in_memory_event_log import InMemoryEventLog
from persistence.sql_event_log import SqlEventLog
from tests.support.polling import eventually
from tests.support.rabbitmq import fresh_vhost

SECRET = "s3cret-Pa55"


def run(scenario: Coroutine[Any, Any, None]) -> None:
    asyncio.run(asyncio.wait_for(scenario, timeout=60))


def quorum(round_: int) -> Envelope:
    event = QuorumReached(run_id="r1", round=round_, model_version=0, update_ids=("u",), partial=False)
    return Envelope(event=event)


@pytest.fixture(scope="module")
def rabbitmq_url() -> Iterator[str]:
    with fresh_vhost("fedbus-open-adapters") as url:
        yield url


def sqlite_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'nested' / 'fedbus.db'}"


def aiosqlite_url(tmp_path: Path) -> str:
    return f"sqlite+aiosqlite:///{tmp_path / 'fedbus.db'}"


EVENT_LOG_URLS: list[Any] = [
    pytest.param(lambda _: "memory://", InMemoryEventLog, id="memory"),
    pytest.param(sqlite_url, SqlEventLog, id="sqlite"),
    pytest.param(aiosqlite_url, SqlEventLog, id="sqlite+aiosqlite"),
]


@pytest.mark.parametrize(("make_url", "adapter"), EVENT_LOG_URLS)
def test_event_log_url_opens_its_adapter_which_appends_and_reads_a_stream(
    tmp_path: Path, make_url: Callable[[Path], str], adapter: type
) -> None:
    async def scenario() -> None:
        written = [quorum(1), quorum(2)]
        log = await open_event_log(make_url(tmp_path))
        try:
            version = await log.append("run-r1", written, expected_version=0)
            read = await log.read_stream("run-r1")
        finally:
            await log.close()
        assert isinstance(log, adapter)
        assert version == 2
        assert [r.envelope.event_id for r in read] == [e.event_id for e in written]
        assert [r.version for r in read] == [1, 2]

    run(scenario())


@pytest.mark.integration
@pytest.mark.parametrize("scheme", ["postgresql", "postgresql+asyncpg"])
def test_postgresql_url_opens_the_sql_log_on_a_fresh_database(postgres_url: str, scheme: str) -> None:
    url = scheme + postgres_url.removeprefix("postgresql")

    async def scenario() -> None:
        log = await open_event_log(url)
        try:
            await log.append("run-r1", [quorum(1)], expected_version=0)
            read = await log.read_stream("run-r1")
        finally:
            await log.close()
        assert isinstance(log, SqlEventLog)
        assert log.engine.dialect.name == "postgresql"
        assert [(r.stream_id, r.version) for r in read] == [("run-r1", 1)]

    run(scenario())


async def publish_and_consume_one(url: str) -> tuple[object, list[Envelope], Envelope]:
    broker = await open_broker(url, connect_attempts=3)
    received: list[Envelope] = []

    async def handle(envelope: Envelope) -> None:
        received.append(envelope)

    async def so_far() -> list[Envelope]:
        return list(received)

    try:
        consumer = await broker.consume(AGGREGATOR_QUEUE, handle)
        sent = quorum(1)
        await broker.publish(sent)
        await eventually(so_far, lambda got: len(got) >= 1)
        await consumer.cancel()
    finally:
        await broker.close()
    return broker, received, sent


def test_memory_broker_url_publishes_and_consumes_one_event() -> None:
    async def scenario() -> None:
        broker, received, sent = await publish_and_consume_one("memory://")
        assert isinstance(broker, InMemoryBroker)
        assert [e.event_id for e in received] == [sent.event_id]

    run(scenario())


@pytest.mark.integration
def test_amqp_broker_url_publishes_and_consumes_one_event_on_a_fresh_vhost(rabbitmq_url: str) -> None:
    async def scenario() -> None:
        broker, received, sent = await publish_and_consume_one(rabbitmq_url)
        assert isinstance(broker, RabbitBroker)
        assert [e.event_id for e in received] == [sent.event_id]

    run(scenario())


@pytest.mark.parametrize(
    "url",
    [
        f"mysql://root:{SECRET}@127.0.0.1:3306/fedbus",
        f"amqp://guest:{SECRET}@127.0.0.1:5672/",
        f"root:{SECRET}@127.0.0.1/fedbus",
        "memory://somewhere",
        "",
    ],
)
def test_unknown_event_log_url_is_refused_naming_the_field_without_its_password(url: str) -> None:
    with pytest.raises(ConfigError) as raised:
        asyncio.run(open_event_log(url))

    assert raised.value.field == "database_url"
    assert SECRET not in str(raised.value)
    assert "memory://" in str(raised.value)


@pytest.mark.parametrize(
    "url",
    [f"postgresql://root:{SECRET}@127.0.0.1:notaport/fedbus", f"postgresql+asyncpg://root:{SECRET}@[::1/fedbus"],
)
def test_unparsable_database_url_is_refused_before_connecting_without_its_password(url: str) -> None:
    with pytest.raises(ConfigError) as raised:
        asyncio.run(open_event_log(url))

    assert raised.value.field == "database_url"
    assert SECRET not in str(raised.value)
    assert "not a database URL" in raised.value.message


def test_refused_event_log_url_lists_every_allowed_scheme() -> None:
    with pytest.raises(ConfigError) as raised:
        asyncio.run(open_event_log(f"mysql://root:{SECRET}@db/fedbus"))

    for scheme in ("memory://", "sqlite://", "sqlite+aiosqlite://", "postgresql://", "postgresql+asyncpg://"):
        assert scheme in raised.value.message
    assert "mysql://root:***@db/fedbus" in raised.value.message


@pytest.mark.parametrize(
    "url",
    [
        f"redis://user:{SECRET}@127.0.0.1:6379/0",
        f"postgresql://root:{SECRET}@127.0.0.1/fedbus",
        f"guest:{SECRET}@127.0.0.1:5672/",
        f"amqp//guest:{SECRET}@127.0.0.1:5672/",
        "memory://somewhere",
    ],
)
def test_unknown_broker_url_is_refused_naming_the_field_without_its_password(url: str) -> None:
    with pytest.raises(ConfigError) as raised:
        asyncio.run(open_broker(url))

    assert raised.value.field == "amqp_url"
    assert SECRET not in str(raised.value)
    assert "memory://" in str(raised.value)


def test_refused_broker_url_lists_every_allowed_scheme() -> None:
    with pytest.raises(ConfigError) as raised:
        asyncio.run(open_broker(f"redis://user:{SECRET}@cache:6379/0"))

    for scheme in ("memory://", "amqp://", "amqps://"):
        assert scheme in raised.value.message
    assert "redis://user:***@cache:6379/0" in raised.value.message
