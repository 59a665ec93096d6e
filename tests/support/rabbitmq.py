"""A fresh RabbitMQ vhost for a test module, made with rabbitmqctl; skips (or fails) when there is none."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from urllib.parse import quote, urlsplit

import pytest

BASE_URL = os.environ.get("FEDBUS_TEST_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/")


def _unavailable(reason: str) -> None:
    if os.environ.get("FEDBUS_REQUIRE_SERVICES") == "1":
        pytest.fail(f"RabbitMQ required (FEDBUS_REQUIRE_SERVICES=1): {reason}")
    pytest.skip(f"RabbitMQ not available: {reason}")


def _rabbitmqctl(*args: str) -> None:
    subprocess.run(["rabbitmqctl", *args], check=True, capture_output=True, timeout=60)


def rabbitmq_address() -> tuple[str, int]:
    """Host and port of the test broker."""
    parts = urlsplit(BASE_URL)
    return parts.hostname or "127.0.0.1", parts.port or 5672


@contextmanager
def fresh_vhost(prefix: str = "fedbus-test") -> Iterator[str]:
    """Yield an AMQP URL on a new vhost (guest may do anything there); the vhost is deleted afterwards."""
    host, port = rabbitmq_address()
    try:
        socket.create_connection((host, port), timeout=2).close()
    except OSError as exc:
        _unavailable(f"{host}:{port} unreachable ({exc})")
    if shutil.which("rabbitmqctl") is None:
        _unavailable("rabbitmqctl not found")
    parts = urlsplit(BASE_URL)
    vhost = f"{prefix}-{uuid.uuid4().hex[:10]}"
    try:
        _rabbitmqctl("add_vhost", vhost)
        _rabbitmqctl("set_permissions", "-p", vhost, parts.username or "guest", ".*", ".*", ".*")
    except (OSError, subprocess.SubprocessError) as exc:
        _unavailable(f"rabbitmqctl failed: {exc}")
    try:
        yield f"{parts.scheme}://{parts.netloc}/{quote(vhost, safe='')}"
    finally:
        subprocess.run(["rabbitmqctl", "delete_vhost", vhost], capture_output=True, timeout=60)
