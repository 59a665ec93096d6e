"""GET /api/v1/stream: server-sent events of new log events, by polling the log (both backends).

A sync view streaming from a generator, so each open stream holds one waitress worker thread. Streams are
bounded so that they never take the workers reads and health checks need: at most `max_streams` are open
(more are refused with 503 and Retry-After); each ends after `stream_max_s` or `stream_max_bytes` (EventSource
reconnects with Last-Event-ID), and within one poll of its client going away (waitress reads ahead while a
request runs, see server.py). Writing at most `stream_max_bytes` keeps a client that never reads from
blocking the worker inside waitress (it blocks a writer only past OUTBUF_HIGH_WATERMARK of unsent output).
EventSource cannot set headers, so this endpoint also accepts the viewer token as ?token=.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

from flask import Blueprint, Response, current_app, request

from contracts.errors import TransientError
from persistence.sql_read_model import EventFilter
from services.api import presenters
from services.api.database import ApiDatabase, StoreWork
from services.api.errors import Unavailable
from services.api.params import MAX_POSITION, parse_int
from services.api.reads import event_filter
from services.api.settings import ApiSettings
from services.api.stream_slots import StreamSlots

KEEP_ALIVE_S = 15.0
BATCH = 200
CALL_TIMEOUT_S = 30.0
RETRY_AFTER_S = 5
KEEP_ALIVE = ": keep-alive\n\n"
HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}

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
        after = database.call(lambda store: store.reads.head(), CALL_TIMEOUT_S)  # only what comes next
    return EventFilter(after=after, limit=BATCH, run_id=page.run_id, round=page.round, type=page.type)


def _page_of(page: EventFilter) -> StoreWork[list[dict[str, Any]]]:
    return lambda store: store.reads.events(page)


@dataclasses.dataclass(slots=True)
class Budget:
    """What one stream may still do: until `deadline`, `bytes_left` more bytes, while its client is there."""

    deadline: float
    bytes_left: int
    client_gone: Callable[[], bool]
    closing: threading.Event

    def allows(self) -> bool:
        return not self.closing.is_set() and time.monotonic() < self.deadline and not self.client_gone()

    def spend(self, chunk: str) -> bool:
        """Count `chunk` against the budget; False (and nothing counted) when it would not fit."""
        size = len(chunk.encode())
        if size > self.bytes_left:
            return False
        self.bytes_left -= size
        return True


def _events(database: ApiDatabase, start: EventFilter, budget: Budget, poll_s: float) -> Iterator[str]:
    page, quiet_since = start, time.monotonic()
    while budget.allows():
        try:
            rows = database.call(_page_of(page), CALL_TIMEOUT_S)
        except (TransientError, TimeoutError) as exc:
            log.warning("event stream ends: %s", exc or type(exc).__name__)
            yield sse(page.after, "unavailable", {"error": "the event log is unavailable"})
            return
        for row in rows:
            chunk = sse(row["position"], row["type"], presenters.event_view(row))
            if not budget.spend(chunk):
                return  # the client resumes from the last id it got
            yield chunk
        if rows:
            page = dataclasses.replace(page, after=rows[-1]["position"])
            quiet_since = time.monotonic()
            continue
        if time.monotonic() - quiet_since > KEEP_ALIVE_S:
            if not budget.spend(KEEP_ALIVE):
                return
            quiet_since = time.monotonic()
            yield KEEP_ALIVE
        budget.closing.wait(poll_s)


def _never_gone() -> bool:
    return False


@stream.get("/stream")
def event_stream() -> Response:
    database: ApiDatabase = current_app.extensions["fedbus.database"]
    settings: ApiSettings = current_app.extensions["fedbus.settings"]
    slots: StreamSlots = current_app.extensions["fedbus.streams"]
    start = _start(database)
    if request.method == "HEAD":  # headers only: a HEAD must not hold a worker for a whole stream
        return Response(mimetype="text/event-stream", headers=HEADERS)
    release = slots.take()
    if release is None:
        raise Unavailable(f"all {slots.capacity} event streams are taken; try again", retry_after_s=RETRY_AFTER_S)
    first = f"retry: 2000\n: from position {start.after}\n\n"
    budget = Budget(
        deadline=time.monotonic() + settings.stream_max_s,
        bytes_left=settings.stream_max_bytes - len(first),
        client_gone=request.environ.get("waitress.client_disconnected", _never_gone),
        closing=current_app.extensions["fedbus.closing"],
    )

    def generate() -> Iterator[str]:
        yield first
        yield from _events(database, start, budget, settings.stream_poll_s)

    response = Response(generate(), mimetype="text/event-stream", headers=HEADERS)
    response.call_on_close(release)  # waitress closes the body however the stream ends
    return response


__all__ = ["sse", "stream"]
