"""The few statements whose spelling differs between PostgreSQL and SQLite."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Final

from sqlalchemy import Table, TextClause, text
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.sql.dml import Insert

# Every appending transaction on PostgreSQL takes this lock first, so positions are handed out in commit
# order and a reader tailing by position never skips an event that committed late.
APPEND_LOCK_KEY: Final = 0x66656462_7573  # "fedbus"


def append_lock(dialect: str) -> TextClause | None:
    """The statement that serializes appenders, or None where the database already does (SQLite)."""
    if dialect == "postgresql":
        return text("SELECT pg_advisory_xact_lock(:key)").bindparams(key=APPEND_LOCK_KEY)
    return None


def upsert(
    dialect: str,
    table: Table,
    values: Mapping[str, Any],
    keys: Sequence[str],
    update: Sequence[str] = (),
) -> Insert:
    """INSERT ... ON CONFLICT (keys) DO NOTHING, or DO UPDATE SET the `update` columns to the new values."""
    stmt = (pg_insert if dialect == "postgresql" else sqlite_insert)(table).values(dict(values))
    if not update:
        return stmt.on_conflict_do_nothing(index_elements=list(keys))
    return stmt.on_conflict_do_update(index_elements=list(keys), set_={name: stmt.excluded[name] for name in update})


__all__ = ["APPEND_LOCK_KEY", "append_lock", "upsert"]
