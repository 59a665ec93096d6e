"""The OpenAPI 3.1 description of the API, written by hand; schemathesis checks the app against it."""

from __future__ import annotations

import copy
from typing import Any, Final

from contracts.events import EVENT_TYPES
from services.api.openapi_schemas import PRINTABLE, SCHEMAS, obj, ref
from services.api.params import MAX_PATH_VALUE, MAX_POSITION

Json = dict[str, Any]


def _json(schema: Json, description: str) -> Json:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _errors(*codes: int) -> Json:
    text = {
        400: "Malformed query or body; `field` names it",
        401: "No bearer token, or an unknown one",
        403: "The token's role does not allow this (or management is off: no tokens configured)",
        404: "No such run, round or client",
        409: "The state does not allow it (run exists or already ended, client already evicted)",
        413: "The body is larger than FEDBUS_API_MAX_BODY_BYTES",
        503: "The event log is unavailable (or, for the stream, every stream slot is taken: see Retry-After)",
    }
    return {str(code): _json(ref("Error"), text[code]) for code in codes}


READ_ERRORS: Final = (401, 403, 503)


def _path_param(name: str, description: str) -> Json:
    schema = {"type": "string", "maxLength": MAX_PATH_VALUE, "pattern": PRINTABLE}
    return {"name": name, "in": "path", "required": True, "schema": schema, "description": description}


def _query(name: str, schema: Json, description: str) -> Json:
    return {"name": name, "in": "query", "required": False, "schema": schema, "description": description}


RUN_ID: Final = _path_param("run_id", "the run's id")
CLIENT_ID: Final = _path_param("client_id", "the client's id")
EVENT_QUERY: Final = [
    _query("after", {"type": "integer", "minimum": 0, "maximum": MAX_POSITION}, "only events after this log position"),
    _query("run_id", {"type": "string", "maxLength": 200, "pattern": PRINTABLE}, "only this run's events"),
    _query("round", {"type": "integer", "minimum": 0, "maximum": 10000000}, "only this round's events"),
    _query("type", {"type": "string", "enum": list(EVENT_TYPES)}, "only events of this type"),
]
VIEWER: Final[list[Json]] = [{"bearer": []}, {}]  # {}: open when the API runs without tokens
ADMIN: Final[list[Json]] = [{"bearer": []}]


def _get(
    summary: str, schema: Json, *, params: list[Json] | None = None, errors: tuple[int, ...] = READ_ERRORS
) -> Json:
    return {
        "get": {
            "summary": summary,
            "security": VIEWER,
            "parameters": params or [],
            "responses": {"200": _json(schema, summary)} | _errors(*errors),
        }
    }


def _post(
    summary: str, status: int, schema: Json, *, params: list[Json], body: Json | None, errors: tuple[int, ...]
) -> Json:
    operation: Json = {
        "summary": summary,
        "security": ADMIN,
        "parameters": params,
        "responses": {str(status): _json(schema, summary)} | _errors(401, 403, 503, *errors),
    }
    if body is not None:
        operation["responses"] |= _errors(413)
        operation["requestBody"] = {"required": False, "content": {"application/json": {"schema": body}}}
    return {"post": operation}


def _public(summary: str, responses: Json) -> Json:
    return {"get": {"summary": summary, "security": [], "responses": responses}}


CHECK: Final = obj({"status": {"type": "string"}, "checks": {"type": "object"}})
PATHS: Final[Json] = {
    "/healthz": _public("The process answers", {"200": _json(obj({"status": {"type": "string"}}), "alive")}),
    "/readyz": _public(
        "Database (and broker, when FEDBUS_AMQP_URL is set) reachable",
        {"200": _json(CHECK, "ready"), "503": _json(CHECK, "not ready")},
    ),
    "/metrics": _public(
        "Prometheus metrics",
        {"200": {"description": "text exposition", "content": {"text/plain": {"schema": {"type": "string"}}}}},
    ),
    "/openapi.json": _public("This document", {"200": _json({"type": "object"}, "OpenAPI 3.1")}),
    "/api/v1/runs": _get("Every run, newest first", obj({"runs": {"type": "array", "items": ref("RunSummary")}}))
    | _post(
        "Start a run (appends RunCreated)",
        201,
        obj({"run_id": {"type": "string"}, "status": {"type": "string"}, "config": {"type": "object"}}),
        params=[],
        body=ref("RunConfigInput"),
        errors=(400, 409),
    ),
    "/api/v1/runs/{run_id}": _get(
        "One run: config, status, progress, model, metrics",
        ref("Run"),
        params=[RUN_ID],
        errors=(*READ_ERRORS, 400, 404),
    ),
    "/api/v1/runs/{run_id}/rounds": _get(
        "The rounds of a run",
        obj({"run_id": {"type": "string"}, "rounds": {"type": "array", "items": ref("Round")}}),
        params=[RUN_ID],
        errors=(*READ_ERRORS, 400, 404),
    ),
    "/api/v1/runs/{run_id}/rounds/{round}": _get(
        "One round of a run",
        ref("Round"),
        params=[
            RUN_ID,
            {
                "name": "round",
                "in": "path",
                "required": True,
                "schema": {"type": "integer", "minimum": 0, "maximum": 10000000},
            },
        ],
        errors=(*READ_ERRORS, 400, 404),
    ),
    "/api/v1/runs/{run_id}/privacy": _get(
        "Epsilon per client and round, budget left", ref("Privacy"), params=[RUN_ID], errors=(*READ_ERRORS, 400, 404)
    ),
    "/api/v1/runs/{run_id}/stop": _post(
        "Stop a running run (appends RunCompleted reason=stopped)",
        200,
        obj({"run_id": {"type": "string"}, "status": {"type": "string"}, "rounds_completed": {"type": "integer"}}),
        params=[RUN_ID],
        body=None,
        errors=(400, 404, 409),
    ),
    "/api/v1/clients": _get("Every registered client", obj({"clients": {"type": "array", "items": ref("Client")}})),
    "/api/v1/clients/{client_id}": _get(
        "One client", ref("Client"), params=[CLIENT_ID], errors=(*READ_ERRORS, 400, 404)
    ),
    "/api/v1/clients/{client_id}/evict": _post(
        "Evict a client (appends ClientEvicted)",
        200,
        obj({"client_id": {"type": "string"}, "evicted": {"type": "boolean"}, "reason": {"type": "string"}}),
        params=[CLIENT_ID],
        body={
            "type": "object",
            "additionalProperties": False,
            "properties": {"reason": {"type": "string", "minLength": 1, "maxLength": 200, "pattern": PRINTABLE}},
        },
        errors=(400, 404, 409),
    ),
    "/api/v1/events": _get(
        "A page of the event log by position",
        obj({"events": {"type": "array", "items": ref("Event")}, "next_after": {"type": "integer"}}),
        params=[
            *EVENT_QUERY,
            _query("limit", {"type": "integer", "minimum": 1, "maximum": 500}, "page size, default 100"),
        ],
        errors=(*READ_ERRORS, 400),
    ),
    "/api/v1/stream": {
        "get": {
            "summary": "Server-sent events of new log events (id = position; resumes from Last-Event-ID or ?after=)",
            "security": [*VIEWER, {"query_token": []}],
            "parameters": [
                *EVENT_QUERY,
                {"name": "token", "in": "query", "required": False, "schema": {"type": "string"}},
            ],
            "responses": {
                "200": {
                    "description": "an event stream",
                    "content": {"text/event-stream": {"schema": {"type": "string"}}},
                }
            }
            | _errors(*READ_ERRORS, 400),
        }
    },
}

DOCUMENT: Final[Json] = {
    "openapi": "3.1.0",
    "info": {
        "title": "fedbus API",
        "version": "1.0.0",
        "description": "State of federated runs from the event log; management actions append events.",
    },
    "paths": PATHS,
    "components": {
        "schemas": SCHEMAS,
        "securitySchemes": {
            "bearer": {"type": "http", "scheme": "bearer", "description": "FEDBUS_API_TOKENS: viewer or admin"},
            "query_token": {"type": "apiKey", "in": "query", "name": "token", "description": "EventSource only"},
        },
    },
}


def openapi_document() -> Json:
    """A fresh copy of the document (callers may not mutate the shared one)."""
    return copy.deepcopy(DOCUMENT)


__all__ = ["openapi_document"]
