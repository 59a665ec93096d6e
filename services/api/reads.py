"""GET /api/v1/...: runs, rounds, clients, privacy and pages of events. Viewer role (or open reads)."""

from __future__ import annotations

from typing import Any

from flask import Blueprint, current_app

from contracts.events import EVENT_TYPES
from persistence.sql_read_model import EventFilter
from services.api import presenters
from services.api.database import ApiDatabase, Store
from services.api.errors import BadRequest, Missing
from services.api.params import MAX_POSITION, int_arg, parse_int, str_arg

MAX_PAGE = 500
MAX_ROUND = 10_000_000

reads = Blueprint("reads", __name__, url_prefix="/api/v1")
Json = dict[str, Any]


def _db() -> ApiDatabase:
    database: ApiDatabase = current_app.extensions["fedbus.database"]
    return database


@reads.get("/runs")
async def list_runs() -> Json:
    rows = await _db().run(lambda store: store.reads.runs())
    return {"runs": [presenters.run_summary(row) for row in rows]}


@reads.get("/runs/<run_id>")
async def get_run(run_id: str) -> Json:
    row = await _db().run(lambda store: store.reads.run(run_id))
    return presenters.run_detail(row)


async def _rounds(store: Store, run_id: str) -> list[Json]:
    await store.reads.run(run_id)  # NotFound -> 404
    rounds = await store.reads.rounds(run_id)
    accepted = await store.reads.updates(run_id)
    rejected = await store.reads.rejections(run_id)
    declined = await store.reads.declines(run_id)
    return presenters.rounds_view(rounds, accepted, rejected, declined)


@reads.get("/runs/<run_id>/rounds")
async def list_rounds(run_id: str) -> Json:
    return {"run_id": run_id, "rounds": await _db().run(lambda store: _rounds(store, run_id))}


@reads.get("/runs/<run_id>/rounds/<round>")
async def get_round(run_id: str, round: str) -> Json:  # the path's names are the fields errors name
    wanted = parse_int("round", round, 0, MAX_ROUND)
    for view in await _db().run(lambda store: _rounds(store, run_id)):
        if view["round"] == wanted:
            return view
    raise Missing(f"run {run_id} has no round {wanted}")


@reads.get("/runs/<run_id>/privacy")
async def get_privacy(run_id: str) -> Json:
    async def work(store: Store) -> Json:
        run = await store.reads.run(run_id)
        spent = await store.reads.privacy(run_id)
        accepted = await store.reads.updates(run_id)
        return presenters.privacy_view(run, spent, accepted)

    return await _db().run(work)


@reads.get("/clients")
async def list_clients() -> Json:
    rows = await _db().run(lambda store: store.reads.clients())
    return {"clients": [presenters.client_view(row) for row in rows]}


@reads.get("/clients/<client_id>")
async def get_client(client_id: str) -> Json:
    row = await _db().run(lambda store: store.reads.client(client_id))  # NotFound -> 404
    return presenters.client_view(row)


def event_filter(*, default_after: int | None = 0) -> EventFilter:
    """?after=&limit=&run_id=&round=&type= as a filter; 400 naming the field when malformed."""
    kind = str_arg("type", max_length=64)
    if kind is not None and kind not in EVENT_TYPES:
        raise BadRequest(f"type must be one of {', '.join(EVENT_TYPES)}", field="type")
    return EventFilter(
        after=int_arg("after", default_after, 0, MAX_POSITION) or 0,
        limit=int_arg("limit", 100, 1, MAX_PAGE) or 100,
        run_id=str_arg("run_id"),
        round=int_arg("round", None, 0, MAX_ROUND),
        type=kind,
    )


@reads.get("/events")
async def list_events() -> Json:
    page = event_filter()
    rows = await _db().run(lambda store: store.reads.events(page))
    events = [presenters.event_view(row) for row in rows]
    return {"events": events, "next_after": events[-1]["position"] if events else page.after}


__all__ = ["MAX_PAGE", "event_filter", "reads"]
