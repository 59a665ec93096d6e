"""The adapters a composition root uses: given by the caller (embedded mode, tests) or opened from the
settings' URLs, in which case the root owns them and closes them when it stops."""

from __future__ import annotations

from typing import Protocol

from broker.broker_url import Broker, open_broker
from contracts.ports import EventLog
from ops.settings import Settings
from persistence.event_log_url import open_event_log


class Closable(Protocol):
    async def close(self) -> None: ...


async def log_and_broker(
    settings: Settings, log: EventLog | None, broker: Broker | None
) -> tuple[EventLog, Broker, tuple[Closable, ...]]:
    """The event log and broker to use, and which of them were opened here (the caller closes those)."""
    opened: list[Closable] = []
    if log is None:
        log = await open_event_log(settings.database_url, create=False)  # Alembic owns the schema
        opened.append(log)
    if broker is None:
        broker = await open_broker(settings.amqp_url, connect_attempts=30)
        opened.append(broker)
    return log, broker, tuple(opened)


async def close_owned(owned: tuple[Closable, ...]) -> None:
    """Close what a root opened, the last opened first."""
    for adapter in reversed(owned):
        await adapter.close()
