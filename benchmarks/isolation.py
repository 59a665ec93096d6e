"""A fresh RabbitMQ vhost, PostgreSQL database and loopback port for one deployed benchmark run.

A shared database would hand the coordinator clients registered by earlier runs, which it then selects and
waits for; a shared vhost would let other deployments' aggregators consume this run's messages.
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import socket
import subprocess
import uuid
from collections.abc import Iterator
from urllib.parse import quote, urlsplit, urlunsplit

from ops.settings import Settings
from persistence.sql_admin import create_database, drop_database


@contextlib.contextmanager
def fresh_vhost(amqp_url: str, prefix: str = "fedbus-bench") -> Iterator[str]:
    """The URL of a new vhost on `amqp_url`'s broker when rabbitmqctl is at hand, else `amqp_url` itself."""
    ctl = shutil.which("rabbitmqctl")
    name = f"{prefix}-{uuid.uuid4().hex[:8]}"
    parts = urlsplit(amqp_url)
    created = usable = False
    if ctl is not None:
        with contextlib.suppress(subprocess.SubprocessError, OSError):
            subprocess.run([ctl, "add_vhost", name], check=True, capture_output=True, timeout=60)
            created = True
            grant = [ctl, "set_permissions", "-p", name, parts.username or "guest", ".*", ".*", ".*"]
            subprocess.run(grant, check=True, capture_output=True, timeout=60)
            usable = True
    try:
        yield urlunsplit((parts.scheme, parts.netloc, "/" + quote(name, safe=""), "", "")) if usable else amqp_url
    finally:
        if created and ctl is not None:
            subprocess.run([ctl, "delete_vhost", name], capture_output=True, timeout=60, check=False)


@contextlib.contextmanager
def fresh_database(database_url: str, prefix: str = "fedbus_bench") -> Iterator[str]:
    """The URL of a new, empty database on `database_url`'s server; dropped afterwards."""
    admin_url = urlunsplit(urlsplit(database_url)._replace(path="/postgres"))
    name = f"{prefix}_{uuid.uuid4().hex[:8]}"
    url = asyncio.run(create_database(admin_url, name))
    try:
        yield url
    finally:
        asyncio.run(drop_database(admin_url, name))


@contextlib.contextmanager
def fresh_deployment() -> Iterator[dict[str, str]]:
    """FEDBUS_AMQP_URL and FEDBUS_DATABASE_URL (from the environment's settings) of a new vhost and database."""
    settings = Settings.from_env()
    with fresh_vhost(settings.amqp_url) as amqp_url, fresh_database(settings.database_url) as database_url:
        yield {"FEDBUS_AMQP_URL": amqp_url, "FEDBUS_DATABASE_URL": database_url}


def free_port() -> int:
    """A loopback port nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])
