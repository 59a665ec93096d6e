"""A client that comes up while the broker connection is down keeps trying to declare its queue.

The fault suite caught it: a client restarted during a broker cut registered over gRPC, then its queue
declaration met the dropped connection and the process exited. The declaration is idempotent, so
`ClientApp.start` retries it while aio-pika reconnects.
"""

from __future__ import annotations

import asyncio
from typing import Any, cast

import pytest

from broker import connection
from broker.errors import BrokerUnavailable
from services.roots.client import ClientApp


class FlakyBroker:
    def __init__(self, failures: int) -> None:
        self.failures = failures
        self.declared: list[str] = []
        self.consumed: list[str] = []

    async def ensure_client_queue(self, client_id: str, key: str = "") -> str:
        if self.failures:
            self.failures -= 1
            raise BrokerUnavailable("cannot declare fedbus.client.c-1: connection closed")
        self.declared.append(client_id)
        return f"fedbus.client.{client_id}"

    async def consume(self, queue: str, handler: Any, *, prefetch: int | None = None) -> str:
        self.consumed.append(queue)
        return "consumer"


class Worker:
    client_id = "c-1"

    async def handle(self, envelope: Any) -> None:
        return None


def app(broker: FlakyBroker) -> ClientApp:
    return ClientApp(worker=cast(Any, Worker()), transport=cast(Any, None), broker=cast(Any, broker), owns_broker=False)


def test_a_dropped_connection_during_the_queue_declaration_is_retried() -> None:
    broker = FlakyBroker(failures=2)

    asyncio.run(app(broker).start())

    assert broker.declared == ["c-1"]
    assert broker.consumed == ["fedbus.client.c-1"]


def test_a_broker_that_stays_away_fails_the_start_with_its_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(
        "services.roots.client.while_reconnecting", lambda: connection.while_reconnecting(deadline_s=0.2)
    )
    broker = FlakyBroker(failures=1_000)

    with pytest.raises(BrokerUnavailable, match="cannot declare"):
        asyncio.run(app(broker).start())
