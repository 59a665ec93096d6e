"""Fixtures of the deployed tests: a fresh vhost and a fresh database per test, and the process fleet.

Skipped when RabbitMQ, PostgreSQL or the MNIST files are missing, unless FEDBUS_REQUIRE_SERVICES=1.
"""

from __future__ import annotations

import asyncio
import os
import socket
import uuid
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import unquote, urlsplit

import pytest
from sqlalchemy.engine import make_url

from persistence.sql_admin import drop_database
from tests.deployed.world import Deployment, process_env
from tests.support.processes import Fleet, free_port
from tests.support.rabbitmq import fresh_vhost

PG_ADMIN_URL = os.environ.get("FEDBUS_TEST_PG_ADMIN_URL", "postgresql://root@127.0.0.1:5432/postgres")
DATA_DIR = os.environ.get("FEDBUS_DATA_DIR") or str(Path(__file__).resolve().parents[3] / "shared" / "datasets")


def _unavailable(reason: str) -> None:
    if os.environ.get("FEDBUS_REQUIRE_SERVICES") == "1":
        pytest.fail(f"required (FEDBUS_REQUIRE_SERVICES=1): {reason}")
    pytest.skip(reason)


@pytest.fixture
def amqp_url() -> Iterator[str]:
    """An AMQP URL on a fresh vhost, deleted afterwards."""
    with fresh_vhost("fedbus-deployed") as url:
        yield url


def vhost_of(url: str) -> str:
    return unquote(urlsplit(url).path.lstrip("/"))


@pytest.fixture
def database_url() -> Iterator[str]:
    """The URL of a database that does not exist yet (`fedbus db upgrade` or ensure_database makes it)."""
    admin = make_url(PG_ADMIN_URL)
    try:
        socket.create_connection((admin.host or "127.0.0.1", admin.port or 5432), timeout=2).close()
    except OSError as exc:
        _unavailable(f"PostgreSQL unreachable: {exc}")
    name = f"fedbus_deployed_{uuid.uuid4().hex[:12]}"
    yield admin.set(database=name).render_as_string(hide_password=False)
    asyncio.run(drop_database(PG_ADMIN_URL, name))


@pytest.fixture
def data_dir() -> str:
    if not (Path(DATA_DIR) / "MNIST" / "raw").is_dir():
        _unavailable(f"no MNIST files under {DATA_DIR} (set FEDBUS_DATA_DIR)")
    return DATA_DIR


@pytest.fixture
def deployment(amqp_url: str, database_url: str, data_dir: str, tmp_path: Path) -> Iterator[Deployment]:
    """Settings for `fedbus coordinator | aggregator | client` processes; every process is killed after."""
    run_id = f"run-{uuid.uuid4().hex[:10]}"
    port = free_port()
    config_path = tmp_path / "run.toml"
    env = process_env(
        amqp_url=amqp_url,
        database_url=database_url,
        data_dir=data_dir,
        config_path=config_path,
        run_id=run_id,
        port=port,
        state_dir=tmp_path / "state",
    )
    fleet = Fleet(tmp_path / "logs", env)
    world = Deployment(
        fleet=fleet,
        amqp_url=amqp_url,
        vhost=vhost_of(amqp_url),
        database_url=database_url,
        run_id=run_id,
        config_path=config_path,
    )
    try:
        world.upgrade_database()
        yield world
    finally:
        survivors = fleet.stop()
        print(fleet.tails())  # pytest shows it only for a failed test
    assert not survivors, f"processes outlived their group kill: {survivors}"
