"""Public endpoints: /healthz (the process answers), /readyz (database and broker reachable),
/metrics (Prometheus) and /openapi.json."""

from __future__ import annotations

import asyncio
import logging
from typing import Any
from urllib.parse import urlsplit

from flask import Blueprint, Response, current_app

from services.api.database import ApiDatabase
from services.api.metrics import CONTENT_TYPE, ApiMetrics
from services.api.openapi import openapi_document
from services.api.settings import ApiSettings

CHECK_TIMEOUT_S = 3.0
AMQP_PORTS = {"amqp": 5672, "amqps": 5671}

health = Blueprint("health", __name__)
log = logging.getLogger(__name__)


def _db() -> ApiDatabase:
    database: ApiDatabase = current_app.extensions["fedbus.database"]
    return database


@health.get("/healthz")
def healthz() -> dict[str, str]:
    return {"status": "ok"}


async def database_check(database: ApiDatabase) -> str:
    try:
        await asyncio.wait_for(database.run(lambda store: store.reads.head()), CHECK_TIMEOUT_S)
    except Exception as exc:  # readiness: whatever went wrong, the answer is "not ready"
        return f"unreachable: {type(exc).__name__}"
    return "ok"


async def broker_check(amqp_url: str | None) -> str:
    """A TCP connect to the broker's host and port (no credentials are sent)."""
    if amqp_url is None:
        return "not configured"
    try:
        parts = urlsplit(amqp_url)
        host, port = parts.hostname or "127.0.0.1", parts.port or AMQP_PORTS.get(parts.scheme, 5672)
        _, writer = await asyncio.wait_for(asyncio.open_connection(host, port), CHECK_TIMEOUT_S)
    except (OSError, TimeoutError, ValueError) as exc:
        return f"unreachable: {type(exc).__name__}"
    writer.close()
    await writer.wait_closed()
    return "ok"


@health.get("/readyz")
async def readyz() -> tuple[dict[str, Any], int]:
    settings: ApiSettings = current_app.extensions["fedbus.settings"]
    checks = {"database": await database_check(_db()), "broker": await broker_check(settings.amqp_url)}
    ready = all(value in ("ok", "not configured") for value in checks.values())
    if not ready:
        log.warning("not ready: %s", checks)
    return {"status": "ready" if ready else "not ready", "checks": checks}, 200 if ready else 503


@health.get("/metrics")
async def metrics() -> Response:
    api_metrics: ApiMetrics = current_app.extensions["fedbus.metrics"]
    stats = await _db().run(lambda store: store.reads.stats())
    return Response(api_metrics.render(stats), content_type=CONTENT_TYPE)


@health.get("/openapi.json")
def openapi() -> dict[str, Any]:
    return openapi_document()


__all__ = ["broker_check", "database_check", "health"]
