"""Fixtures of the API tests: a seeded event log (SQLite file, or a fresh PostgreSQL database per
module) and the API served by waitress on a free loopback port in a thread.

PostgreSQL is skipped when unreachable unless FEDBUS_REQUIRE_SERVICES=1.
"""

from __future__ import annotations

import asyncio
import os
import uuid
from collections.abc import Callable, Coroutine, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

import pytest

from contracts.errors import TransientError
from persistence.sql_admin import create_database, drop_database
from persistence.sql_event_log import SqlEventLog
from services.api.server import ApiServer
from services.api.settings import ApiSettings, Role
from tests.api.world import seed

T = TypeVar("T")
PG_ADMIN_URL = os.environ.get("FEDBUS_TEST_PG_ADMIN_URL", "postgresql://root@127.0.0.1:5432/postgres")
VIEWER_TOKEN = "viewer-secret-4d1c9e"  # constants: importlib mode may import this module twice
ADMIN_TOKEN = "admin-secret-7b2f60"
TOKENS = {VIEWER_TOKEN: Role.VIEWER, ADMIN_TOKEN: Role.ADMIN}
POSTGRES = pytest.param("postgres", marks=pytest.mark.integration)


def run_async(coro: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(asyncio.wait_for(coro, 60))


def on_log(url: str, action: Callable[[SqlEventLog], Coroutine[Any, Any, T]]) -> T:
    """Open the log at `url` in a fresh loop, run `action`, close: a writer other than the API."""

    async def go() -> T:
        log = await SqlEventLog.connect(url)
        try:
            return await action(log)
        finally:
            await log.close()

    return run_async(go())


def auth(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


@pytest.fixture(scope="module")
def sqlite_url(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A seeded SQLite log shaped like an embedded run's --out folder."""
    url = f"sqlite+aiosqlite:///{tmp_path_factory.mktemp('run') / 'fedbus.db'}"
    run_async(seed(url))
    return url


@contextmanager
def postgres_database() -> Iterator[str]:
    name = f"fedbus_api_{uuid.uuid4().hex[:12]}"
    try:
        url = run_async(create_database(PG_ADMIN_URL, name))
    except (TransientError, OSError) as error:
        if os.environ.get("FEDBUS_REQUIRE_SERVICES") == "1":
            pytest.fail(f"PostgreSQL required but unreachable: {error}")
        pytest.skip(f"PostgreSQL unreachable: {error}")
    try:
        yield url
    finally:
        run_async(drop_database(PG_ADMIN_URL, name))


@pytest.fixture(scope="module")
def postgres_url() -> Iterator[str]:
    """A fresh, seeded PostgreSQL database for one test module."""
    with postgres_database() as url:
        run_async(seed(url))
        yield url


@pytest.fixture(scope="module", params=["sqlite", POSTGRES])
def database_url(request: pytest.FixtureRequest) -> str:
    """The seeded log on each backend."""
    return str(request.getfixturevalue(f"{request.param}_url"))


@contextmanager
def serving(url: str, **options: Any) -> Iterator[ApiServer]:
    """The API on a free loopback port, closed (loop thread included) afterwards."""
    settings = ApiSettings(database_url=url, port=0, **options)
    server = ApiServer(settings).start()
    try:
        yield server
    finally:
        server.close()


@pytest.fixture(scope="module")
def api(database_url: str) -> Iterator[ApiServer]:
    """The API with viewer and admin tokens over the seeded log of each backend."""
    with serving(database_url, tokens=TOKENS) as server:
        yield server


@pytest.fixture
def fresh_sqlite(tmp_path: Path) -> str:
    url = f"sqlite+aiosqlite:///{tmp_path / 'fedbus.db'}"
    run_async(seed(url))
    return url
