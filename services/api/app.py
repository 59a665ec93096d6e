"""The composition root of the API: `create_app(settings, database=...)` wires blueprints, auth,
errors, metrics and the dashboard. Nothing connects at import time."""

from __future__ import annotations

import logging
import threading
from pathlib import Path

from flask import Flask, Response, request

from services.api.auth import TokenGate
from services.api.database import ApiDatabase
from services.api.errors import register_error_handlers
from services.api.health import health
from services.api.management import management
from services.api.metrics import ApiMetrics
from services.api.params import check_path_values, check_query_size
from services.api.reads import reads
from services.api.settings import ApiSettings, Role
from services.api.stream import stream
from services.api.stream_slots import StreamSlots

STATIC = Path(__file__).parent / "static"
access_log = logging.getLogger("fedbus.api.access")
log = logging.getLogger(__name__)
# What each blueprint needs; health and the dashboard are public.
NEEDS = {reads.name: Role.VIEWER, stream.name: Role.VIEWER, management.name: Role.ADMIN}


def create_app(settings: ApiSettings, *, database: ApiDatabase | None = None) -> Flask:
    """The Flask app; `database` defaults to one connected to settings.database_url (started here)."""
    app = Flask(__name__, static_folder=str(STATIC), static_url_path="/static")
    app.json.sort_keys = False  # type: ignore[attr-defined]
    app.config["MAX_CONTENT_LENGTH"] = settings.max_body_bytes
    database = database if database is not None else ApiDatabase(settings.database_url).start()
    gate = TokenGate(settings.tokens)
    if not gate.enabled:
        log.warning("no API tokens configured: reads are open to anyone who can connect, management is off")
    slots = StreamSlots(settings.max_streams)
    api_metrics = ApiMetrics(open_streams=lambda: slots.open)
    app.extensions.update(
        {
            "fedbus.database": database,
            "fedbus.settings": settings,
            "fedbus.metrics": api_metrics,
            "fedbus.streams": slots,
            "fedbus.closing": threading.Event(),
        }
    )
    for blueprint in (health, reads, stream, management):
        app.register_blueprint(blueprint)
    register_error_handlers(app)

    @app.before_request
    def authorize() -> None:
        needed = NEEDS.get(request.blueprint or "")
        if needed is not None:
            gate.check(needed, query_token=request.blueprint == stream.name)

    @app.before_request
    def check_sizes() -> None:
        check_query_size()
        check_path_values(request.view_args)

    @app.get("/")
    def dashboard() -> Response:
        response = app.send_static_file("index.html")
        response.headers["Cache-Control"] = "no-cache"
        return response

    @app.after_request
    def record(response: Response) -> Response:
        route = request.url_rule.rule if request.url_rule is not None else "<unmatched>"
        api_metrics.count(route, request.method, response.status_code)
        # The path only: no query string (?token=) and no headers (Authorization) ever reach the log.
        access_log.info("%s %s %s", request.method, request.path, response.status_code)
        return response

    return app


def end_streams(app: Flask) -> None:
    """Ask open event streams to end (they check between polls)."""
    app.extensions["fedbus.closing"].set()


def close_app(app: Flask) -> None:
    """End open event streams and release the database (its loop thread included); idempotent."""
    end_streams(app)
    database: ApiDatabase = app.extensions["fedbus.database"]
    database.close()


__all__ = ["close_app", "create_app", "end_streams"]
