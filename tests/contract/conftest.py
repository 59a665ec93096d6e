"""Backends for the event-log contract suite: in-memory, SQLite in tmp_path, PostgreSQL per module.

pytest-asyncio is not used: tests are sync functions that hand a coroutine to `run` (a fresh loop each).
PostgreSQL: a fresh database per test module on FEDBUS_TEST_PG_ADMIN_URL (default: local trust auth),
emptied before each test and dropped afterwards; skipped when unreachable unless FEDBUS_REQUIRE_SERVICES=1.
"""

from __future__ import annotations

import asyncio
import os
import uuid
from collections.abc import AsyncIterator, Callable, Coroutine, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import pytest
from sqlalchemy import text

from contracts.errors import TransientError
from contracts.ports import EventLog
from persistence.in_memory_event_log import InMemoryEventLog
from persistence.schema import metadata
from persistence.sql_admin import create_database, drop_database
from persistence.sql_event_log import SqlEventLog

T = TypeVar("T")
PG_ADMIN_URL = os.environ.get("FEDBUS_TEST_PG_ADMIN_URL", "postgresql://root@127.0.0.1:5432/postgres")
RUN_TIMEOUT_S = 60.0


def run_coroutine(coro: Coroutine[Any, Any, T]) -> T:
    """Run `coro` to completion in a fresh event loop, with a generous safety timeout."""
    return asyncio.run(asyncio.wait_for(coro, RUN_TIMEOUT_S))


@pytest.fixture
def run() -> Callable[[Coroutine[Any, Any, Any]], Any]:
    return run_coroutine


@dataclass
class Backend:
    """Opens handles on one store; every handle of a test sees the same data."""

    name: str
    url: str | None = None
    memory: InMemoryEventLog | None = None

    @property
    def is_sql(self) -> bool:
        return self.url is not None

    async def open(self) -> EventLog:
        if self.memory is not None:
            return self.memory
        assert self.url is not None
        return await SqlEventLog.connect(self.url)

    @asynccontextmanager
    async def opened(self) -> AsyncIterator[Any]:
        """A handle typed Any so tests can reach the SQL read helpers; closed on exit."""
        log = await self.open()
        try:
            yield log
        finally:
            await log.close()


def new_database_name() -> str:
    return f"fedbus_test_{uuid.uuid4().hex[:12]}"


def require_services() -> bool:
    return os.environ.get("FEDBUS_REQUIRE_SERVICES") == "1"


def _create_postgres() -> tuple[str, str]:
    name = new_database_name()
    try:
        return name, run_coroutine(create_database(PG_ADMIN_URL, name))
    except TransientError as error:
        if require_services():
            pytest.fail(f"PostgreSQL required but unreachable: {error}")
        pytest.skip(f"PostgreSQL unreachable: {error}")


@pytest.fixture(scope="module")
def postgres_url() -> Iterator[str]:
    """A fresh PostgreSQL database shared by one test module, dropped afterwards."""
    name, url = _create_postgres()
    yield url
    run_coroutine(drop_database(PG_ADMIN_URL, name))


@pytest.fixture
def empty_postgres_url() -> Iterator[str]:
    """A fresh PostgreSQL database without tables, for one test (migrations)."""
    name, url = _create_postgres()
    yield url
    run_coroutine(drop_database(PG_ADMIN_URL, name))


async def _empty(url: str) -> None:
    log = await SqlEventLog.connect(url)
    try:
        names = ", ".join(table.name for table in metadata.sorted_tables)
        async with log.engine.begin() as conn:
            await conn.execute(text(f"TRUNCATE {names} RESTART IDENTITY"))
    finally:
        await log.close()


def _make_backend(request: pytest.FixtureRequest, tmp_path: Path, name: str) -> Backend:
    if name == "memory":
        return Backend(name=name, memory=InMemoryEventLog())
    if name == "sqlite":
        return Backend(name=name, url=f"sqlite:///{tmp_path / 'fedbus.db'}")
    url = request.getfixturevalue("postgres_url")
    run_coroutine(_empty(url))
    return Backend(name=name, url=url)


POSTGRES = pytest.param("postgresql", marks=pytest.mark.integration)


@pytest.fixture(params=["memory", "sqlite", POSTGRES])
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Backend:
    """Every EventLog implementation."""
    return _make_backend(request, tmp_path, request.param)


@pytest.fixture(params=["sqlite", POSTGRES])
def sql_backend(request: pytest.FixtureRequest, tmp_path: Path) -> Backend:
    """The SQL implementations (projections, read helpers, migrations, error translation)."""
    return _make_backend(request, tmp_path, request.param)
