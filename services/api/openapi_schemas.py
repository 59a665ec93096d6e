"""The component schemas of the OpenAPI document: the JSON shapes services/api/presenters.py produces."""

from __future__ import annotations

from typing import Any, Final

from contracts.catalog import BUILTIN_TASKS
from contracts.config import PARTITION_PATTERN
from contracts.events import EVENT_TYPES
from contracts.strategy import STRATEGIES

Json = dict[str, Any]


def nullable(kind: str) -> Json:
    return {"type": [kind, "null"]}


def ref(name: str) -> Json:
    return {"$ref": f"#/components/schemas/{name}"}


def obj(properties: Json, *, required: list[str] | None = None) -> Json:
    return {"type": "object", "properties": properties, "required": list(properties) if required is None else required}


# Text the API takes from clients has no control characters (services/api/params.py refuses them).
PRINTABLE: Final = "^[^\\u0000-\\u001f\\u007f-\\u009f]*$"
NUMBER: Final = {"type": "number"}
TIME: Final = {"type": "number", "description": "seconds since the epoch"}
METRICS: Final = {"type": "object", "additionalProperties": True}

SCHEMAS: Final[Json] = {
    "Error": obj({"error": {"type": "string"}, "field": {"type": "string"}}, required=["error"]),
    "RunSummary": obj(
        {
            "run_id": {"type": "string"},
            "status": {"type": "string", "enum": ["running", "completed", "stopped"]},
            "reason": nullable("string"),
            "rounds_completed": {"type": "integer", "minimum": 0},
            "rounds_planned": nullable("integer"),
            "model_version": nullable("integer"),
            "model_digest": nullable("string"),
            "metrics": METRICS,
            "created_at": TIME,
            "updated_at": TIME,
        }
    ),
    "Run": {"allOf": [ref("RunSummary"), obj({"config": {"type": "object"}})]},
    "Update": obj(
        {
            "update_id": {"type": "string"},
            "client_id": {"type": "string"},
            "num_samples": {"type": "integer"},
            "digest": {"type": "string"},
            "wire_bytes": {"type": "integer"},
            "raw_bytes": {"type": "integer"},
            "ratio": nullable("number"),
            "epsilon": nullable("number"),
            "late": {"type": "boolean", "description": "arrived after its round closed"},
            "model_version": {**nullable("integer"), "description": "the model it was trained on; null: not recorded"},
            "aggregated_in": {
                **nullable("integer"),
                "description": "the round whose aggregation took it (under FedBuff a late update is carried into "
                "the next buffer); null while none has",
            },
            "plan": {
                "description": "its client's plan for the round; null: the client trained the run's plan",
                "anyOf": [{"type": "null"}, ref("ClientPlan")],
            },
            "metrics": METRICS,
            "accepted_at": TIME,
        }
    ),
    "ClientPlan": obj(
        {
            "max_steps": {**nullable("integer"), "description": "local steps; null: the run's"},
            "compression": {"type": "string"},
            "why": {"type": "string"},
        }
    ),
    "Round": obj(
        {
            "round": {"type": "integer"},
            "attempt": {"type": "integer"},
            "status": {"type": "string", "enum": ["open", "quorum", "aggregated", "failed"]},
            "model_version": {"type": "integer"},
            "model_digest": {"type": "string"},
            "selected": {"type": "array", "items": {"type": "string"}},
            "plans": {
                "type": ["object", "null"],
                "description": "capability-aware plans: client id -> what that selected client trains instead of "
                "the run's plan, and why ({}: every client trains the run's; null: not recorded)",
                "additionalProperties": ref("ClientPlan"),
            },
            "deadline": TIME,
            "started_at": TIME,
            "quorum_at": nullable("number"),
            "aggregated_at": nullable("number"),
            "partial": nullable("boolean"),
            "new_model_version": nullable("integer"),
            "new_model_digest": nullable("string"),
            "metrics": METRICS,
            "failure_reason": nullable("string"),
            "durations": obj(
                {
                    "to_quorum_s": nullable("number"),
                    "aggregation_s": nullable("number"),
                    "total_s": nullable("number"),
                }
            ),
            "accepted": {"type": "array", "items": ref("Update")},
            "federated_evaluation": {
                "description": "the selected clients' scores of the model this round started from (model_version) "
                "on their own test data, weighted by their test samples; null when no client has test data",
                "anyOf": [
                    {"type": "null"},
                    {
                        "type": "object",
                        "properties": {
                            "model_version": {"type": "integer"},
                            "samples": {"type": "integer"},
                            "clients": {"type": "integer"},
                        },
                        "required": ["model_version", "samples", "clients"],
                        "additionalProperties": {"type": "number"},
                    },
                ],
            },
            "rejected": {
                "type": "array",
                "items": obj(
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
                "items": obj({"client_id": {"type": "string"}, "reason": {"type": "string"}, "at": TIME}),
            },
        }
    ),
    "Client": obj(
        {
            "client_id": {"type": "string"},
            "capabilities": {"type": "object"},
            "registered_at": TIME,
            "last_seen": TIME,
            "rounds_joined": {"type": "integer"},
            "epsilon": nullable("number"),
            "evicted": {"type": "boolean"},
            "evicted_reason": nullable("string"),
        }
    ),
    "Privacy": obj(
        {
            "run_id": {"type": "string"},
            "enabled": {"type": "boolean"},
            "target_epsilon": nullable("number"),
            "delta": nullable("number"),
            "noise_multiplier": {**nullable("number"), "description": "null when no process reported it"},
            "epsilon_spent": nullable("number"),
            "budget_left": {**nullable("number"), "description": "target_epsilon - epsilon_spent"},
            "rounds": {
                "type": "array",
                "items": obj(
                    {
                        "round": {"type": "integer"},
                        "epsilon": {**NUMBER, "description": "the largest epsilon any client reached by this round"},
                        "clients": {
                            "type": "array",
                            "items": obj(
                                {"client_id": {"type": "string"}, "epsilon": NUMBER, "budget_left": nullable("number")}
                            ),
                        },
                    }
                ),
            },
            "clients": {
                "type": "array",
                "items": obj(
                    {"client_id": {"type": "string"}, "epsilon_spent": NUMBER, "budget_left": nullable("number")}
                ),
            },
        }
    ),
    "Event": obj(
        {
            "position": {"type": "integer"},
            "event_id": {"type": "string"},
            "stream_id": {"type": "string"},
            "version": {"type": "integer"},
            "type": {"type": "string", "enum": list(EVENT_TYPES)},
            "run_id": nullable("string"),
            "round": nullable("integer"),
            "occurred_at": TIME,
            "traceparent": nullable("string"),
            "payload": {"type": "object"},
        }
    ),
    "RunConfigInput": {
        "type": "object",
        "description": "A partial RunConfig.to_dict(); omitted options take their defaults. run_id is optional.",
        "additionalProperties": False,
        "properties": {
            "run_id": {"type": "string", "pattern": "^[A-Za-z0-9][A-Za-z0-9._:-]{0,99}$"},
            "task": {
                "type": "string",
                "maxLength": 100,
                "examples": list(BUILTIN_TASKS),
                "description": "a task name registered where the API runs (the built-ins: "
                + ", ".join(BUILTIN_TASKS)
                + ") or package.module:attribute",
            },
            "clients": {"type": "integer", "minimum": 1, "maximum": 100000},
            "rounds": {"type": "integer", "minimum": 1, "maximum": 100000},
            "partition": {"type": "string", "pattern": f"^(?:{PARTITION_PATTERN})$"},
            "compression": {"type": "string", "enum": ["none", "fp32", "fp16", "int8", "topk:0.1+int8"]},
            "seed": {"type": "integer", "minimum": 0, "maximum": 2147483647},
            "target_accuracy": {"type": ["number", "null"], "exclusiveMinimum": 0, "maximum": 1},
            "init_model": {
                "type": ["string", "null"],
                "pattern": "^[0-9a-f]{64}$",
                "description": "sha256 of a model blob in the log to start from instead of the task's seeded weights",
            },
            "patience": {"type": "integer", "minimum": 0, "maximum": 100000},
            "min_delta": {"type": "number", "minimum": 0, "maximum": 1},
            "eval_limit": {"type": ["integer", "null"], "minimum": 1, "maximum": 10000000},
            "train_limit": {
                "type": ["integer", "null"],
                "minimum": 1,
                "maximum": 10000000,
                "description": "at least `clients` (checked by the server)",
            },
            "privacy": {
                "type": "object",
                "additionalProperties": False,
                "properties": {
                    "accountant": {"type": "string", "enum": ["rdp", "prv"]},
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
                    "aggregation_timeout_s": {"type": "number", "exclusiveMinimum": 0, "maximum": 86400},
                    "max_attempts": {"type": "integer", "minimum": 1, "maximum": 100},
                    "local_epochs": {"type": "integer", "minimum": 1, "maximum": 1000},
                    "batch_size": {"type": "integer", "minimum": 1, "maximum": 65536},
                    "lr": {"type": "number", "exclusiveMinimum": 0, "maximum": 100},
                    "momentum": {"type": "number", "minimum": 0, "maximum": 0.999},
                    "max_update_norm": {"type": ["number", "null"], "exclusiveMinimum": 0, "maximum": 1e9},
                    "max_update_norm_ratio": {"type": ["number", "null"], "exclusiveMinimum": 0, "maximum": 1e6},
                    "max_update_bytes": {"type": "integer", "minimum": 1024, "maximum": 4294967296},
                },
            },
            "user_privacy": {
                "type": "object",
                "description": "user-level DP-FedAvg with adaptive clipping (docs/privacy.md); off by default",
                "additionalProperties": False,
                "properties": {
                    "enabled": {"type": "boolean"},
                    "noise_multiplier": {"type": "number", "exclusiveMinimum": 0, "maximum": 1000},
                    "clip_norm": {"type": "number", "exclusiveMinimum": 0, "maximum": 1e9},
                    "adaptive": {"type": "boolean"},
                    "target_quantile": {"type": "number", "minimum": 0, "maximum": 1},
                    "clip_lr": {"type": "number", "exclusiveMinimum": 0, "maximum": 10},
                    "clip_count_stddev": {"type": ["number", "null"], "exclusiveMinimum": 0, "maximum": 1e9},
                    "sample_rate": {"type": "number", "exclusiveMinimum": 0, "maximum": 1},
                    "delta": {"type": "number", "exclusiveMinimum": 0, "maximum": 0.1},
                    "epsilon": {"type": ["number", "null"], "exclusiveMinimum": 0, "maximum": 1000},
                },
            },
            "strategy": {
                "type": "object",
                "description": "the server step and its options (server_lr, momentum, beta1, beta2, tau, "
                "bias_correction, mu: which ones depends on the name; checked by the server)",
                "properties": {"name": {"type": "string", "enum": list(STRATEGIES)}},
                "additionalProperties": {"type": ["number", "boolean"]},
            },
        },
    },
}


__all__ = ["PRINTABLE", "SCHEMAS", "nullable", "obj", "ref"]
