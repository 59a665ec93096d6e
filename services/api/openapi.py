"""The OpenAPI 3.1 description of the API, written by hand; schemathesis checks the app against it."""

from __future__ import annotations

import copy
from typing import Any, Final

from contracts.events import EVENT_TYPES

Json = dict[str, Any]


def _nullable(kind: str) -> Json:
    return {"type": [kind, "null"]}


def _ref(name: str) -> Json:
    return {"$ref": f"#/components/schemas/{name}"}


def _object(properties: Json, *, required: list[str] | None = None) -> Json:
    return {"type": "object", "properties": properties, "required": list(properties) if required is None else required}


def _json(schema: Json, description: str) -> Json:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _errors(*codes: int) -> Json:
    text = {
        400: "Malformed query or body; `field` names it",
        401: "No bearer token, or an unknown one",
        403: "The token's role does not allow this (or management is off: no tokens configured)",
        404: "No such run, round or client",
        409: "The state does not allow it (run exists or already ended, client already evicted)",
        503: "The event log is unavailable",
    }
    return {str(code): _json(_ref("Error"), text[code]) for code in codes}


READ_ERRORS: Final = (401, 403, 503)
NUMBER: Final = {"type": "number"}
TIME: Final = {"type": "number", "description": "seconds since the epoch"}
METRICS: Final = {"type": "object", "additionalProperties": True}

SCHEMAS: Final[Json] = {
    "Error": _object({"error": {"type": "string"}, "field": {"type": "string"}}, required=["error"]),
    "RunSummary": _object(
        {
            "run_id": {"type": "string"},
            "status": {"type": "string", "enum": ["running", "completed", "stopped"]},
            "reason": _nullable("string"),
            "rounds_completed": {"type": "integer", "minimum": 0},
            "rounds_planned": _nullable("integer"),
            "model_version": _nullable("integer"),
            "model_digest": _nullable("string"),
            "metrics": METRICS,
            "created_at": TIME,
            "updated_at": TIME,
        }
    ),
    "Run": {"allOf": [_ref("RunSummary"), _object({"config": {"type": "object"}})]},
    "Update": _object(
        {
            "update_id": {"type": "string"},
            "client_id": {"type": "string"},
            "num_samples": {"type": "integer"},
            "digest": {"type": "string"},
            "wire_bytes": {"type": "integer"},
            "raw_bytes": {"type": "integer"},
            "ratio": _nullable("number"),
            "epsilon": _nullable("number"),
            "late": {"type": "boolean"},
            "metrics": METRICS,
            "accepted_at": TIME,
        }
    ),
    "Round": _object(
        {
            "round": {"type": "integer"},
            "attempt": {"type": "integer"},
            "status": {"type": "string", "enum": ["open", "quorum", "aggregated", "failed"]},
            "model_version": {"type": "integer"},
            "model_digest": {"type": "string"},
            "selected": {"type": "array", "items": {"type": "string"}},
            "deadline": TIME,
            "started_at": TIME,
            "quorum_at": _nullable("number"),
            "aggregated_at": _nullable("number"),
            "partial": _nullable("boolean"),
            "new_model_version": _nullable("integer"),
            "new_model_digest": _nullable("string"),
            "metrics": METRICS,
            "failure_reason": _nullable("string"),
            "durations": _object(
                {
                    "to_quorum_s": _nullable("number"),
                    "aggregation_s": _nullable("number"),
                    "total_s": _nullable("number"),
                }
            ),
            "accepted": {"type": "array", "items": _ref("Update")},
            "rejected": {
                "type": "array",
                "items": _object(
                    {
                        "client_id": {"type": "string"},
                        "reason": {"type": "string"},
                        "detail": {"type": "string"},
                        "at": TIME,
                    }
                ),
            },
            "declined": {
                "type": "array",
                "items": _object({"client_id": {"type": "string"}, "reason": {"type": "string"}, "at": TIME}),
            },
        }
    ),
    "Client": _object(
        {
            "client_id": {"type": "string"},
            "partition_index": {"type": "integer"},
            "capabilities": {"type": "object"},
            "registered_at": TIME,
            "last_seen": TIME,
            "rounds_joined": {"type": "integer"},
            "epsilon": _nullable("number"),
            "evicted": {"type": "boolean"},
            "evicted_reason": _nullable("string"),
        }
    ),
    "Privacy": _object(
        {
            "run_id": {"type": "string"},
            "enabled": {"type": "boolean"},
            "target_epsilon": _nullable("number"),
            "delta": _nullable("number"),
            "noise_multiplier": {**_nullable("number"), "description": "null when no process reported it"},
            "epsilon_spent": _nullable("number"),
            "budget_left": {**_nullable("number"), "description": "target_epsilon - epsilon_spent"},
            "rounds": {
                "type": "array",
                "items": _object(
                    {
                        "round": {"type": "integer"},
                        "epsilon": {**NUMBER, "description": "the largest epsilon any client reached by this round"},
                        "clients": {
                            "type": "array",
                            "items": _object(
                                {"client_id": {"type": "string"}, "epsilon": NUMBER, "budget_left": _nullable("number")}
                            ),
                        },
                    }
                ),
            },
            "clients": {
                "type": "array",
                "items": _object(
                    {"client_id": {"type": "string"}, "epsilon_spent": NUMBER, "budget_left": _nullable("number")}
                ),
            },
        }
    ),
    "Event": _object(
        {
            "position": {"type": "integer"},
            "event_id": {"type": "string"},
            "stream_id": {"type": "string"},
            "version": {"type": "integer"},
            "type": {"type": "string", "enum": list(EVENT_TYPES)},
            "run_id": _nullable("string"),
            "round": _nullable("integer"),
            "occurred_at": TIME,
            "traceparent": _nullable("string"),
            "payload": {"type": "object"},
        }
    ),
    "RunConfigInput": {
        "type": "object",
        "description": "A partial RunConfig.to_dict(); omitted options take their defaults. run_id is optional.",
        "additionalProperties": False,
        "properties": {
            "run_id": {"type": "string", "pattern": "^[A-Za-z0-9][A-Za-z0-9._:-]{0,99}$"},
            "dataset": {"type": "string", "enum": ["mnist", "cifar10"]},
            "model": {"type": "string", "minLength": 1, "maxLength": 100},
            "clients": {"type": "integer", "minimum": 1, "maximum": 100000},
            "rounds": {"type": "integer", "minimum": 1, "maximum": 100000},
            "partition": {"type": "string", "minLength": 1, "maxLength": 100},
            "compression": {"type": "string", "enum": ["none", "fp32", "fp16", "int8", "topk:0.1+int8"]},
            "seed": {"type": "integer", "minimum": 0, "maximum": 2147483647},
            "target_accuracy": {"type": ["number", "null"], "exclusiveMinimum": 0, "maximum": 1},
            "patience": {"type": "integer", "minimum": 0, "maximum": 100000},
            "min_delta": {"type": "number", "minimum": 0, "maximum": 1},
            "eval_limit": {"type": ["integer", "null"], "minimum": 1, "maximum": 10000000},
            "privacy": {
                "type": "object",
                "additionalProperties": False,
                "properties": {
                    "enabled": {"type": "boolean"},
                    "epsilon": {"type": "number", "exclusiveMinimum": 0, "maximum": 1000},
                    "delta": {"type": "number", "exclusiveMinimum": 0, "maximum": 0.1},
                    "max_grad_norm": {"type": "number", "exclusiveMinimum": 0, "maximum": 1000000},
                },
            },
            "round": {
                "type": "object",
                "additionalProperties": False,
                "properties": {
                    "clients_per_round": {"type": "number", "exclusiveMinimum": 0, "maximum": 1},
                    "quorum": {"type": "number", "exclusiveMinimum": 0, "maximum": 1},
                    "min_updates": {"type": "integer", "minimum": 1, "maximum": 100000},
                    "timeout_s": {"type": "number", "exclusiveMinimum": 0, "maximum": 86400},
                    "grace_s": {"type": "number", "minimum": 0, "maximum": 3600},
                    "max_attempts": {"type": "integer", "minimum": 1, "maximum": 100},
                    "local_epochs": {"type": "integer", "minimum": 1, "maximum": 1000},
                    "batch_size": {"type": "integer", "minimum": 1, "maximum": 65536},
                    "lr": {"type": "number", "exclusiveMinimum": 0, "maximum": 100},
                    "momentum": {"type": "number", "minimum": 0, "maximum": 0.999},
                    "max_update_norm": {"type": ["number", "null"], "exclusiveMinimum": 0, "maximum": 1e9},
                    "max_update_bytes": {"type": "integer", "minimum": 1024, "maximum": 4294967296},
                },
            },
        },
    },
}


def _path_param(name: str, description: str) -> Json:
    return {"name": name, "in": "path", "required": True, "schema": {"type": "string"}, "description": description}


def _query(name: str, schema: Json, description: str) -> Json:
    return {"name": name, "in": "query", "required": False, "schema": schema, "description": description}


RUN_ID: Final = _path_param("run_id", "the run's id")
CLIENT_ID: Final = _path_param("client_id", "the client's id")
EVENT_QUERY: Final = [
    _query("after", {"type": "integer", "minimum": 0}, "only events after this log position"),
    _query("run_id", {"type": "string", "maxLength": 200}, "only this run's events"),
    _query("round", {"type": "integer", "minimum": 0, "maximum": 10000000}, "only this round's events"),
    _query("type", {"type": "string", "enum": list(EVENT_TYPES)}, "only events of this type"),
]
VIEWER: Final = [{"bearer": []}, {}]  # {}: open when the API runs without tokens
ADMIN: Final = [{"bearer": []}]


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
        operation["requestBody"] = {"required": False, "content": {"application/json": {"schema": body}}}
    return {"post": operation}


def _public(summary: str, responses: Json) -> Json:
    return {"get": {"summary": summary, "security": [], "responses": responses}}


CHECK: Final = _object({"status": {"type": "string"}, "checks": {"type": "object"}})
PATHS: Final[Json] = {
    "/healthz": _public("The process answers", {"200": _json(_object({"status": {"type": "string"}}), "alive")}),
    "/readyz": _public(
        "Database (and broker, when FEDBUS_AMQP_URL is set) reachable",
        {"200": _json(CHECK, "ready"), "503": _json(CHECK, "not ready")},
    ),
    "/metrics": _public(
        "Prometheus metrics",
        {"200": {"description": "text exposition", "content": {"text/plain": {"schema": {"type": "string"}}}}},
    ),
    "/openapi.json": _public("This document", {"200": _json({"type": "object"}, "OpenAPI 3.1")}),
    "/api/v1/runs": _get("Every run, newest first", _object({"runs": {"type": "array", "items": _ref("RunSummary")}}))
    | _post(
        "Start a run (appends RunCreated)",
        201,
        _object({"run_id": {"type": "string"}, "status": {"type": "string"}, "config": {"type": "object"}}),
        params=[],
        body=_ref("RunConfigInput"),
        errors=(400, 409),
    ),
    "/api/v1/runs/{run_id}": _get(
        "One run: config, status, progress, model, metrics", _ref("Run"), params=[RUN_ID], errors=(*READ_ERRORS, 404)
    ),
    "/api/v1/runs/{run_id}/rounds": _get(
        "The rounds of a run",
        _object({"run_id": {"type": "string"}, "rounds": {"type": "array", "items": _ref("Round")}}),
        params=[RUN_ID],
        errors=(*READ_ERRORS, 404),
    ),
    "/api/v1/runs/{run_id}/rounds/{round}": _get(
        "One round of a run",
        _ref("Round"),
        params=[RUN_ID, {"name": "round", "in": "path", "required": True, "schema": {"type": "integer", "minimum": 0}}],
        errors=(*READ_ERRORS, 400, 404),
    ),
    "/api/v1/runs/{run_id}/privacy": _get(
        "Epsilon per client and round, budget left", _ref("Privacy"), params=[RUN_ID], errors=(*READ_ERRORS, 404)
    ),
    "/api/v1/runs/{run_id}/stop": _post(
        "Stop a running run (appends RunCompleted reason=stopped)",
        200,
        _object({"run_id": {"type": "string"}, "status": {"type": "string"}, "rounds_completed": {"type": "integer"}}),
        params=[RUN_ID],
        body=None,
        errors=(404, 409),
    ),
    "/api/v1/clients": _get(
        "Every registered client", _object({"clients": {"type": "array", "items": _ref("Client")}})
    ),
    "/api/v1/clients/{client_id}": _get("One client", _ref("Client"), params=[CLIENT_ID], errors=(*READ_ERRORS, 404)),
    "/api/v1/clients/{client_id}/evict": _post(
        "Evict a client (appends ClientEvicted)",
        200,
        _object({"client_id": {"type": "string"}, "evicted": {"type": "boolean"}, "reason": {"type": "string"}}),
        params=[CLIENT_ID],
        body={
            "type": "object",
            "additionalProperties": False,
            "properties": {"reason": {"type": "string", "minLength": 1, "maxLength": 200}},
        },
        errors=(400, 404, 409),
    ),
    "/api/v1/events": _get(
        "A page of the event log by position",
        _object({"events": {"type": "array", "items": _ref("Event")}, "next_after": {"type": "integer"}}),
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
