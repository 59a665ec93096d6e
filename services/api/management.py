"""POST /api/v1/...: start a run, stop a run, evict a client. Admin role only.

Every action is an append to the event log; the coordinator picks it up from there (it tails the log).
The API is a second writer of a run's stream (RunCreated, RunCompleted(stopped)); that is safe because each
append names the version it was decided on, so a stop decided on a stale state conflicts and is retried on
the fresh one (docs/architecture.md, "Who appends to a run's stream").
"""

from __future__ import annotations

import dataclasses
import uuid
from typing import Any

from flask import Blueprint, current_app

from contracts.catalog import check_task
from contracts.config import PrivacyConfig, RoundConfig, RunConfig
from contracts.envelope import Envelope
from contracts.errors import ConcurrencyConflict
from contracts.events import ClientEvicted, RunCompleted, RunCreated
from contracts.streams import client_stream, run_stream
from contracts.user_privacy import UserPrivacyConfig
from services.api.database import ApiDatabase, Store
from services.api.errors import BadRequest, Conflict
from services.api.params import checked_id, checked_text, json_object

STOP_ATTEMPTS = 5
MAX_REASON = 200

management = Blueprint("management", __name__, url_prefix="/api/v1")
Json = dict[str, Any]
Reply = tuple[Json, int] | tuple[Json, int, dict[str, str]]


def _db() -> ApiDatabase:
    database: ApiDatabase = current_app.extensions["fedbus.database"]
    return database


def _check_types(cls: type[Any], prefix: str, data: dict[str, Any]) -> None:
    # RunConfig validates ranges; text and flag options are typed here so a number never reaches str methods.
    for f in dataclasses.fields(cls):
        value, name = data.get(f.name), f"{prefix}{f.name}"
        if f.name in data and f.type == "str" and not (isinstance(value, str) and 0 < len(value) <= 100):
            raise BadRequest(f"{name} must be a non-empty string of at most 100 characters", field=name)
        if f.type == "str" and isinstance(value, str):
            checked_text(name, value, max_length=100)
        if f.name in data and f.type == "bool" and not isinstance(value, bool):
            raise BadRequest(f"{name} must be true or false", field=name)


def parse_run_config(body: dict[str, Any]) -> RunConfig:
    """A RunConfig from a partial RunConfig.to_dict(); ConfigError (-> 400 naming the field) when invalid."""
    _check_types(RunConfig, "", body)
    for name, cls in (("privacy", PrivacyConfig), ("round", RoundConfig), ("user_privacy", UserPrivacyConfig)):
        if isinstance(body.get(name), dict):
            _check_types(cls, f"{name}.", body[name])
    config = RunConfig.from_dict(body)
    # A name no package here registers would start a run no aggregator can initialise: refused up front.
    check_task(config.task)
    if not config.privacy.enabled:  # RunConfig skips these when off; the API's contract checks them always
        PrivacyConfig(**{**dataclasses.asdict(config.privacy), "enabled": True})
    return config


@management.post("/runs")
async def create_run() -> Reply:
    body = json_object(required=False)
    run_id = checked_id("run_id", body.pop("run_id")) if "run_id" in body else f"run-{uuid.uuid4().hex[:10]}"
    config = parse_run_config(body).to_dict()
    event = RunCreated(run_id=run_id, config=config)
    init_model = config.get("init_model")
    if init_model is not None and not await _db().run(lambda store: store.log.has_blob(init_model)):
        raise BadRequest(f"no model blob {init_model} in the event log", field="init_model")
    try:
        await _db().run(lambda store: store.log.append(run_stream(run_id), [Envelope(event=event)], expected_version=0))
    except ConcurrencyConflict as exc:
        raise Conflict(f"run {run_id} already exists") from exc
    return {"run_id": run_id, "status": "running", "config": config}, 201, {"Location": f"/api/v1/runs/{run_id}"}


async def _stop(store: Store, run_id: str) -> Json:
    for _ in range(STOP_ATTEMPTS):
        run = await store.reads.run(run_id)  # NotFound -> 404
        if run["status"] != "running":
            raise Conflict(f"run {run_id} is already {run['status']}")
        version = await store.reads.stream_version(run_stream(run_id))
        event = RunCompleted(run_id=run_id, reason="stopped", rounds=int(run["rounds_completed"]), metrics={})
        try:
            await store.log.append(run_stream(run_id), [Envelope(event=event)], expected_version=version)
        except ConcurrencyConflict:
            continue  # the coordinator appended meanwhile: look again
        return {"run_id": run_id, "status": "stopped", "rounds_completed": event.rounds}
    raise Conflict(f"run {run_id} keeps changing; try again")


@management.post("/runs/<run_id>/stop")
async def stop_run(run_id: str) -> Json:
    return await _db().run(lambda store: _stop(store, run_id))


@management.post("/clients/<client_id>/evict")
async def evict_client(client_id: str) -> Json:
    body = json_object(required=False)
    reason = body.get("reason", "evicted by an operator")
    if not isinstance(reason, str) or not 0 < len(reason) <= MAX_REASON:
        raise BadRequest(f"reason must be a non-empty string of at most {MAX_REASON} characters", field="reason")
    checked_text("reason", reason, max_length=MAX_REASON)

    async def work(store: Store) -> Json:
        client = await store.reads.client(client_id)  # NotFound -> 404
        if client["evicted"]:
            raise Conflict(f"client {client_id} is already evicted")
        event = ClientEvicted(client_id=client_id, reason=reason)
        await store.log.append(client_stream(client_id), [Envelope(event=event)])
        return {"client_id": client_id, "evicted": True, "reason": reason}

    return await _db().run(work)


__all__ = ["management", "parse_run_config"]
