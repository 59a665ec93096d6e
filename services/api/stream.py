"""GET /api/v1/stream: server-sent events of new log events, by polling the log (both backends).

A sync view streaming from a generator: each open stream holds one waitress thread, polls the owning
loop every `stream_poll_s` and ends after `stream_max_s` (EventSource reconnects with Last-Event-ID).
EventSource cannot set headers, so this endpoint also accepts the viewer token as ?token=.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import threading
import time
from collections.abc import Iterator
from typing import Any

from flask import Blueprint, Response, current_app, request

from contracts.errors import TransientError
from persistence.sql_api_queries import EventFilter
from services.api import presenters
from services.api.database import ApiDatabase, StoreWork
from services.api.params import MAX_POSITION, parse_int
from services.api.reads import event_filter
from services.api.settings import ApiSettings

KEEP_ALIVE_S = 15.0
BATCH = 200
CALL_TIMEOUT_S = 30.0

stream = Blueprint("stream", __name__, url_prefix="/api/v1")
log = logging.getLogger(__name__)


def sse(position: int, kind: str, data: object) -> str:
    """One server-sent event: id (the log position), event (the type) and one JSON data line."""
    return f"id: {position}\nevent: {kind}\ndata: {json.dumps(data, separators=(',', ':'))}\n\n"


def _start(database: ApiDatabase) -> EventFilter:
    resume = request.headers.get("Last-Event-ID")
    page = event_filter(default_after=None)
    if resume:
        after = parse_int("Last-Event-ID", resume, 0, MAX_POSITION)
    elif "after" in request.args:
        after = page.after
    else:
        after = database.call(lambda store: store.queries.head(), CALL_TIMEOUT_S)  # only what comes next
    return EventFilter(after=after, limit=BATCH, run_id=page.run_id, round=page.round, type=page.type)


def _page_of(page: EventFilter) -> StoreWork[list[dict[str, Any]]]:
    return lambda store: store.queries.events(page)


@stream.get("/stream")
def event_stream() -> Response:
    database: ApiDatabase = current_app.extensions["fedbus.database"]
    settings: ApiSettings = current_app.extensions["fedbus.settings"]
    closing: threading.Event = current_app.extensions["fedbus.closing"]
    start = _start(database)

    def generate() -> Iterator[str]:
        page, deadline = start, time.monotonic() + settings.stream_max_s
        quiet_since = time.monotonic()
        yield f"retry: 2000\n: from position {page.after}\n\n"
        while not closing.is_set() and time.monotonic() < deadline:
            try:
                rows = database.call(_page_of(page), CALL_TIMEOUT_S)
            except TransientError as exc:
                log.warning("event stream ends: %s", exc)
                yield sse(page.after, "unavailable", {"error": "the event log is unavailable"})
                return
            for row in rows:
                yield sse(row["position"], row["type"], presenters.event_view(row))
            if rows:
                page = dataclasses.replace(page, after=rows[-1]["position"])
                quiet_since = time.monotonic()
                continue
            if time.monotonic() - quiet_since > KEEP_ALIVE_S:
                quiet_since = time.monotonic()
                yield ": keep-alive\n\n"  # also finds out that a client went away
            closing.wait(settings.stream_poll_s)

    headers = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
    return Response(generate(), mimetype="text/event-stream", headers=headers)


__all__ = ["sse", "stream"]
