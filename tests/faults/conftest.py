"""Fixtures of the fault suite: the deployed tests' vhost, database and data, with RabbitMQ behind a proxy.

Every process reaches RabbitMQ through a TcpProxy the test controls (FEDBUS_AMQP_URL names the proxy),
so a fault can cut all of their connections at once. Skipped like the deployed tests when a service or
the MNIST files are missing, unless FEDBUS_REQUIRE_SERVICES=1.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import pytest
from sqlalchemy.engine import make_url

from tests.deployed.conftest import PG_ADMIN_URL, amqp_url, data_dir, database_url, vhost_of
from tests.deployed.world import Deployment, process_env
from tests.faults.proxy_thread import ProxyThread
from tests.support.processes import Fleet, free_port
from tests.support.rabbitmq import rabbitmq_address

__all__ = ["FaultyDeployment", "amqp_url", "data_dir", "database_url", "faulty"]


@dataclass(slots=True, kw_only=True)
class FaultyDeployment:
    """A Deployment whose processes reach RabbitMQ through `proxy`; `direct_amqp_url` bypasses it."""

    world: Deployment
    proxy: ProxyThread
    direct_amqp_url: str
    pg_admin_dsn: str
    database: str


def through(url: str, port: int) -> str:
    """`url` with its host and port replaced by the proxy's 127.0.0.1:`port` (credentials and vhost kept)."""
    parts = urlsplit(url)
    credentials = f"{parts.username}:{parts.password}@" if parts.username else ""
    return urlunsplit((parts.scheme, f"{credentials}127.0.0.1:{port}", parts.path, parts.query, ""))


@pytest.fixture
def faulty(amqp_url: str, database_url: str, data_dir: str, tmp_path: Path) -> Iterator[FaultyDeployment]:
    """Settings for the processes (broker behind the proxy); every process is killed and the proxy stopped after."""
    proxy = ProxyThread(*rabbitmq_address())
    proxied = through(amqp_url, proxy.start())
    run_id = f"run-{uuid.uuid4().hex[:10]}"
    port = free_port()
    config_path = tmp_path / "run.toml"
    env = process_env(
        amqp_url=proxied,
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
        amqp_url=proxied,
        vhost=vhost_of(amqp_url),
        database_url=database_url,
        run_id=run_id,
        config_path=config_path,
    )
    admin = make_url(PG_ADMIN_URL)
    try:
        world.upgrade_database()
        yield FaultyDeployment(
            world=world,
            proxy=proxy,
            direct_amqp_url=amqp_url,
            pg_admin_dsn=admin.set(drivername="postgresql").render_as_string(hide_password=False),
            database=make_url(database_url).database or "",
        )
    finally:
        survivors = fleet.stop()
        proxy.stop()
        print(fleet.tails(60))  # pytest shows it only for a failed test
    assert not survivors, f"processes outlived their group kill: {survivors}"
