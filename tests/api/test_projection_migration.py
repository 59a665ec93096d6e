"""Revision 0003 on a database with history: down to 0002 and up again keeps every row, and the API serves the
rows projected before it (their plans and trained-on versions never recorded) as null, not as made-up values."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import requests
from alembic import command
from sqlalchemy import inspect

from persistence.migrations import alembic_config, upgrade
from persistence.sql_engine import create_engine
from tests.api.conftest import POSTGRES, TOKENS, VIEWER_TOKEN, auth, postgres_database, run_async, serving
from tests.api.world import CLIENTS, seed


@contextmanager
def empty_database(backend: str, tmp_path: Path) -> Iterator[str]:
    if backend == "sqlite":
        yield f"sqlite:///{tmp_path / 'fedbus.db'}"
        return
    with postgres_database() as url:
        yield url


async def columns(url: str, table: str) -> list[str]:
    engine = create_engine(url)
    try:
        async with engine.connect() as conn:
            found = await conn.run_sync(lambda sync: inspect(sync).get_columns(table))
    finally:
        await engine.dispose()
    return [column["name"] for column in found]


@pytest.mark.parametrize("backend", ["sqlite", POSTGRES])
def test_0003_goes_down_and_up_again_and_rows_from_before_it_show_null(backend: str, tmp_path: Path) -> None:
    with empty_database(backend, tmp_path) as url:
        run_async(upgrade(url))
        run_async(seed(url))

        command.downgrade(alembic_config(url), "0002")
        downgraded = run_async(columns(url, "rounds")), run_async(columns(url, "updates"))
        run_async(upgrade(url))
        with serving(url, tokens=TOKENS) as api:
            response = requests.get(api.url + "/api/v1/runs/run-a/rounds", headers=auth(VIEWER_TOKEN), timeout=10)

    assert "plans" not in downgraded[0] and "model_version" not in downgraded[1]
    rounds = response.json()["rounds"]
    assert [r["round"] for r in rounds] == [1, 2] and all(r["plans"] is None for r in rounds)
    first = rounds[0]["accepted"]
    assert [(u["client_id"], u["plan"], u["model_version"], u["aggregated_in"]) for u in first] == [
        (CLIENTS[0], None, None, 1),
        (CLIENTS[1], None, None, 1),
    ]
