"""Creating and dropping PostgreSQL databases (test fixtures, `fedbus db create`)."""

from __future__ import annotations

import re
from typing import Final

from sqlalchemy import text
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import create_async_engine

from contracts.errors import ConfigError
from persistence.errors import translated
from persistence.sql_engine import async_url

_NAME: Final = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")


def _checked(name: str) -> str:
    # Identifiers cannot be bound as parameters; only plain lowercase names reach the SQL text.
    if not _NAME.match(name):
        raise ConfigError("database", f"{name!r} is not a plain lowercase identifier")
    return name


async def create_database(admin_url: str, name: str) -> str:
    """Create database `name` on the server of `admin_url`; returns the new database's URL."""
    await _run(admin_url, f"CREATE DATABASE {_checked(name)}")
    return _with_database(admin_url, name)


async def drop_database(admin_url: str, name: str) -> None:
    """Drop database `name` if it exists, disconnecting its sessions."""
    await _run(admin_url, f"DROP DATABASE IF EXISTS {_checked(name)} WITH (FORCE)")


async def ensure_database(url: str) -> None:
    """Create the PostgreSQL database named in `url` when it does not exist yet (no-op for SQLite)."""
    parsed = make_url(async_url(url))
    if not parsed.drivername.startswith("postgresql") or not parsed.database:
        return
    name = _checked(parsed.database)
    admin_url = parsed.set(database="postgres").render_as_string(hide_password=False)
    engine = create_async_engine(admin_url, isolation_level="AUTOCOMMIT")
    try:
        with translated("administer database"):
            async with engine.connect() as conn:
                found = await conn.scalar(text("SELECT 1 FROM pg_database WHERE datname = :name"), {"name": name})
                if not found:
                    await conn.execute(text(f"CREATE DATABASE {name}"))
    finally:
        await engine.dispose()


async def _run(admin_url: str, statement: str) -> None:
    engine = create_async_engine(async_url(admin_url), isolation_level="AUTOCOMMIT")
    try:
        with translated("administer database"):
            async with engine.connect() as conn:
                await conn.execute(text(statement))
    finally:
        await engine.dispose()


def _with_database(url: str, name: str) -> str:
    return make_url(url).set(database=name).render_as_string(hide_password=False)


__all__ = ["create_database", "drop_database", "ensure_database"]
