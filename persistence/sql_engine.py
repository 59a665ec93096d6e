"""Builds the AsyncEngine for a database URL: SQLite (aiosqlite) or PostgreSQL (asyncpg).

SQLite gets WAL, a busy timeout and foreign keys, and its transactions are begun by us: writing ones
with BEGIN IMMEDIATE so that writers queue up front instead of failing to upgrade a read lock.

PostgreSQL connections are checked for life when the pool hands them out, with one round trip (`;`), not
SQLAlchemy's pre-ping for asyncpg, which wraps it in BEGIN and ROLLBACK (three round trips, each a wake-up of
the server: on a busy coordinator, most of what a query costs). `autocommit` gives a view of the engine
whose statements run outside any transaction (one round trip each, no BEGIN/ROLLBACK): for single
statements that are atomic on their own, reads and idempotent blob puts.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Final

from sqlalchemy import event, exc
from sqlalchemy.engine import Connection, make_url
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine
from sqlalchemy.pool import ConnectionPoolEntry, PoolProxiedConnection
from sqlalchemy.util import await_

from contracts.errors import ConfigError

WRITE_OPTION: Final = "fedbus_write"
SQLITE_BUSY_TIMEOUT_MS: Final = 30_000
_DRIVERS: Final = {
    "sqlite": "sqlite+aiosqlite",
    "postgresql": "postgresql+asyncpg",
    "postgres": "postgresql+asyncpg",
}


def async_url(url: str) -> str:
    """Rewrite a plain `sqlite:///` or `postgresql://` URL to its async driver; reject anything else."""
    try:
        parsed = make_url(url)
    except Exception as error:  # ArgumentError and ValueError both mean "not a URL"
        raise ConfigError("database_url", f"not a database URL: {url!r}") from error
    backend, _, driver = parsed.drivername.partition("+")
    if backend not in _DRIVERS:
        raise ConfigError("database_url", f"unsupported database {backend!r} (sqlite or postgresql)")
    wanted = _DRIVERS[backend]
    if driver and f"{backend}+{driver}" != wanted and not (backend == "postgres" and driver == "asyncpg"):
        raise ConfigError("database_url", f"driver {driver!r} is not supported; use {wanted}")
    return parsed.set(drivername=wanted).render_as_string(hide_password=False)


def create_engine(url: str, *, create_dirs: bool = False) -> AsyncEngine:
    """A configured AsyncEngine; nothing connects until first use."""
    full = make_url(async_url(url))
    if full.get_backend_name() == "sqlite":
        if create_dirs and full.database and full.database != ":memory:":
            Path(full.database).parent.mkdir(parents=True, exist_ok=True)
        engine = create_async_engine(full)
        _configure_sqlite(engine)
        return engine
    engine = create_async_engine(full, pool_size=5, max_overflow=5)
    _ping_on_checkout(engine)
    return engine


def autocommit(engine: AsyncEngine) -> AsyncEngine:
    """The same engine and pool, its statements outside transactions on PostgreSQL (each atomic on its own; at
    PostgreSQL's READ COMMITTED a transaction would not give several reads one snapshot either). SQLite keeps
    its transactions: there they do give a read one snapshot, and cost no round trip."""
    if engine.dialect.name != "postgresql":
        return engine
    return engine.execution_options(isolation_level="AUTOCOMMIT")


async def begin_write(conn: AsyncConnection) -> None:
    """Begin a transaction that will write (BEGIN IMMEDIATE on SQLite)."""
    await conn.execution_options(**{WRITE_OPTION: True})
    await conn.begin()


def _ping_on_checkout(engine: AsyncEngine) -> None:
    @event.listens_for(engine.sync_engine, "checkout")
    def _alive(_dbapi: Any, record: ConnectionPoolEntry, _proxy: PoolProxiedConnection) -> None:
        try:
            await_(record.driver_connection.fetchrow(";"))  # type: ignore[union-attr]
        except Exception as error:  # any failure: the pool drops this connection and opens a fresh one
            raise exc.DisconnectionError(f"pooled connection is dead: {error}") from error


def _configure_sqlite(engine: AsyncEngine) -> None:
    @event.listens_for(engine.sync_engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        # Let us issue BEGIN ourselves; the sqlite3 module's implicit transactions would defeat it.
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.close()

    @event.listens_for(engine.sync_engine, "begin")
    def _on_begin(conn: Connection) -> None:
        immediate = conn.get_execution_options().get(WRITE_OPTION, False)
        conn.exec_driver_sql("BEGIN IMMEDIATE" if immediate else "BEGIN")


__all__ = ["WRITE_OPTION", "async_url", "autocommit", "begin_write", "create_engine"]
