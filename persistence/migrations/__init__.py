"""Alembic migrations of the schema in persistence/schema.py, driven from code (`fedbus db upgrade`)."""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config
from sqlalchemy.engine import Connection

from persistence.errors import translated
from persistence.sql_dialect import append_lock
from persistence.sql_engine import async_url, begin_write, create_engine

SCRIPT_LOCATION = Path(__file__).resolve().parent


def alembic_config(url: str) -> Config:
    """An Alembic Config for `url` pointing at this package's revisions (no alembic.ini needed)."""
    config = Config()
    config.set_main_option("script_location", str(SCRIPT_LOCATION))
    config.set_main_option("sqlalchemy.url", async_url(url).replace("%", "%%"))
    return config


async def upgrade(url: str, revision: str = "head") -> None:
    """Migrate the database at `url` to `revision` in one transaction; one upgrader at a time."""
    config = alembic_config(url)
    engine = create_engine(url, create_dirs=True)
    try:
        with translated("migrate"):
            async with engine.connect() as conn:
                await begin_write(conn)
                lock = append_lock(conn.dialect.name)
                if lock is not None:
                    await conn.execute(lock)
                await conn.run_sync(_upgrade, config, revision)
                await conn.commit()
    finally:
        await engine.dispose()


def _upgrade(connection: Connection, config: Config, revision: str) -> None:
    config.attributes["connection"] = connection
    command.upgrade(config, revision)


__all__ = ["SCRIPT_LOCATION", "alembic_config", "upgrade"]
