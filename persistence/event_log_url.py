"""Opens the EventLog that a `database_url` names: the in-memory twin, or SqlEventLog on SQLite or PostgreSQL.

The scheme alone picks the adapter, so composition roots call `open_event_log(settings.database_url)` and
never name an adapter class. A refused URL is echoed with its password hidden.
"""

from __future__ import annotations

from typing import Final

from sqlalchemy.engine import make_url

from contracts.errors import ConfigError
from contracts.ports import EventLog
from ops.urls import MEMORY_SCHEME, adapter_scheme, shown
from persistence.in_memory_event_log import InMemoryEventLog
from persistence.sql_event_log import SqlEventLog

FIELD: Final = "database_url"
# `postgres` stays because persistence.sql_engine accepts it (the spelling many hosts hand out).
SQL_SCHEMES: Final = ("sqlite", "sqlite+aiosqlite", "postgresql", "postgresql+asyncpg", "postgres", "postgres+asyncpg")
SCHEMES: Final = (MEMORY_SCHEME, *SQL_SCHEMES)


async def open_event_log(url: str, *, create: bool = True) -> EventLog:
    """The event log at `url`: `memory://`, `sqlite[+aiosqlite]:///path` or `postgresql[+asyncpg]://...`.

    `memory://` is a fresh, empty log private to this call. For SQL URLs, `create` makes missing tables
    (and, for SQLite, the file's folder); deployed roles pass `create=False` because Alembic owns the
    schema. Raises ConfigError("database_url", ...) for any other scheme or an unparsable URL.
    """
    if adapter_scheme(url, field=FIELD, schemes=SCHEMES, kind="an event log URL") == MEMORY_SCHEME:
        return InMemoryEventLog()
    try:
        make_url(url)
    except ValueError as error:  # sqlalchemy's ArgumentError is a ValueError too
        # Checked here because the engine layer's message would echo the URL, password and all.
        raise ConfigError(FIELD, f"{shown(url)} is not a database URL") from error
    return await SqlEventLog.connect(url, create=create)


__all__ = ["FIELD", "SCHEMES", "open_event_log"]
