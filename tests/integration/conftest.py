"""Fixtures shared by the integration tests."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import pytest

from contracts.errors import TransientError
from persistence.sql_admin import create_database, drop_database
from tests.contract.conftest import PG_ADMIN_URL, new_database_name, require_services


@pytest.fixture
def postgres_url() -> Iterator[str]:
    """A fresh, empty PostgreSQL database for one test, dropped afterwards (same server as the contract suite)."""
    name = new_database_name()
    try:
        url = asyncio.run(create_database(PG_ADMIN_URL, name))
    except TransientError as error:
        if require_services():
            pytest.fail(f"PostgreSQL required but unreachable: {error}")
        pytest.skip(f"PostgreSQL unreachable: {error}")
    yield url
    asyncio.run(drop_database(PG_ADMIN_URL, name))
