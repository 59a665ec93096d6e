"""Projection rows -> the JSON documents of the API (shapes described in services/api/openapi.py)."""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from contracts.evaluation import federated_evaluation

Record = Mapping[str, Any]
Json = dict[str, Any]


def finite_doc(document: Json) -> Json:
    """`finite` over a whole document."""
    return {key: finite(value) for key, value in document.items()}


def finite(value: Any) -> Any:
    """JSON has no NaN or Infinity: non-finite floats become null, recursively."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {str(k): finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [finite(v) for v in value]
    return value


def _rounds_planned(config: Any) -> int | None:
    planned = config.get("rounds") if isinstance(config, dict) else None
    return planned if isinstance(planned, int) and not isinstance(planned, bool) else None


def run_summary(row: Record) -> Json:
    return finite_doc(
        {
            "run_id": row["run_id"],
            "status": row["status"],
            "reason": row["reason"],
            "rounds_completed": row["rounds_completed"],
            "rounds_planned": _rounds_planned(row["config"]),
            "model_version": row["model_version"],
            "model_digest": row["model_digest"],
            "metrics": row["metrics"] or {},
            "created_at": row["created_at"],
            "updated_at": row["updated_at"],
        }
    )


def run_detail(row: Record) -> Json:
    return run_summary(row) | {"config": finite(row["config"])}


def _by_round(rows: Iterable[Record]) -> dict[int, list[Record]]:
    grouped: dict[int, list[Record]] = defaultdict(list)
    for row in rows:
        grouped[int(row["round"])].append(row)
    return grouped


def _since(start: float, end: float | None) -> float | None:
    return None if end is None else max(0.0, end - start)


def _aggregated_in(rounds: Iterable[Record]) -> dict[str, int]:
    """update_id -> the round whose aggregation took it. Not always its own: FedBuff carries an update that came
    after its buffer closed into the next one. A round not (yet) aggregated took none."""
    return {
        str(update_id): int(row["round"])
        for row in rounds
        if row["status"] == "aggregated"
        for update_id in row["update_ids"] or ()
    }


def _update(row: Record, plans: Mapping[str, Any], aggregated_in: Mapping[str, int]) -> Json:
    """One accepted update, with its client's plan for the round (None: the run's) and where it was aggregated."""
    fields = ("update_id", "client_id", "num_samples", "digest", "wire_bytes", "raw_bytes", "ratio", "epsilon")
    return {name: row[name] for name in fields} | {
        "late": bool(row["late"]),
        "model_version": row["model_version"],
        "aggregated_in": aggregated_in.get(row["update_id"]),
        "plan": plans.get(row["client_id"]),
        "metrics": row["metrics"],
        "accepted_at": row["accepted_at"],
    }


def rounds_view(
    rounds: Sequence[Record], accepted: Iterable[Record], rejected: Iterable[Record], declined: Iterable[Record]
) -> list[Json]:
    """Each round with its selection and plans, accepted/rejected updates, declines, durations and metrics."""
    ups, refusals, declines = _by_round(accepted), _by_round(rejected), _by_round(declined)
    taken = _aggregated_in(rounds)
    views = []
    for row in rounds:
        number, started, plans = int(row["round"]), float(row["started_at"]), row["plans"]
        views.append(
            finite_doc(
                {
                    "round": number,
                    "attempt": row["attempt"],
                    "status": row["status"],
                    "model_version": row["model_version"],
                    "model_digest": row["model_digest"],
                    "selected": list(row["selected"]),
                    "plans": plans,
                    "deadline": row["deadline"],
                    "started_at": started,
                    "quorum_at": row["quorum_at"],
                    "aggregated_at": row["aggregated_at"],
                    "partial": row["partial"],
                    "new_model_version": row["new_model_version"],
                    "new_model_digest": row["new_model_digest"],
                    "metrics": row["metrics"] or {},
                    "failure_reason": row["failure_reason"],
                    "durations": {
                        "to_quorum_s": _since(started, row["quorum_at"]),
                        "aggregation_s": row["duration_s"],
                        "total_s": _since(started, row["aggregated_at"]),
                    },
                    "accepted": [_update(u, plans or {}, taken) for u in ups.get(number, [])],
                    "federated_evaluation": _federated(row["model_version"], ups.get(number, [])),
                    "rejected": [
                        {"client_id": r["client_id"], "reason": r["reason"], "detail": r["detail"], "at": r["at"]}
                        for r in refusals.get(number, [])
                    ],
                    "declined": [
                        {"client_id": d["client_id"], "reason": d["reason"], "at": d["at"]}
                        for d in declines.get(number, [])
                    ],
                }
            )
        )
    return views


def _federated(model_version: int, accepted: Iterable[Record]) -> Json | None:
    """The round's cohort on the model it started from (model_version), weighted by test samples."""
    evaluation = federated_evaluation(model_version, (u["metrics"] or {} for u in accepted))
    return evaluation.to_dict() if evaluation else None


def client_view(row: Record) -> Json:
    return finite_doc(
        {
            "client_id": row["client_id"],
            "capabilities": row["capabilities"],
            "registered_at": row["registered_at"],
            "last_seen": row["last_seen"],
            "rounds_joined": row["rounds_joined"],
            "epsilon": row["epsilon"],
            "evicted": bool(row["evicted"]),
            "evicted_reason": row["evicted_reason"],
        }
    )


def event_view(row: Record) -> Json:
    fields = ("position", "event_id", "stream_id", "version", "type", "run_id", "round", "occurred_at", "traceparent")
    return finite_doc({name: row[name] for name in fields} | {"payload": row["payload"]})


def _number(value: Any) -> float | None:
    if isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value):
        return float(value)
    return None


def _left(target: float | None, spent: float | None) -> float | None:
    return None if target is None or spent is None else target - spent


def _noise_multiplier(accepted: Iterable[Record], section: Mapping[str, Any]) -> float | None:
    """The last value a client reported in its update metrics, else one in the config; None if unknown."""
    for update in reversed(list(accepted)):
        metrics = update["metrics"]
        found = _number(metrics.get("noise_multiplier")) if isinstance(metrics, dict) else None
        if found is not None:
            return found
    return _number(section.get("noise_multiplier"))


def privacy_view(run: Record, spent: Iterable[Record], accepted: Iterable[Record]) -> Json:
    """Per-client and run epsilon per round, budget left against the target, the noise multiplier if known."""
    config: dict[str, Any] = run["config"] if isinstance(run["config"], dict) else {}
    found = config.get("privacy")
    section: dict[str, Any] = found if isinstance(found, dict) else {}
    enabled = bool(section.get("enabled", True))
    target = _number(section.get("epsilon")) if enabled else None
    noise = _noise_multiplier(accepted, section)
    rounds: list[Json] = []
    latest: dict[str, float] = {}
    for number, rows in sorted(_by_round(spent).items()):
        clients = {str(r["client_id"]): float(r["epsilon"]) for r in rows}
        latest |= clients
        rounds.append(
            {
                "round": number,
                "epsilon": max(clients.values()),
                "clients": [
                    {"client_id": c, "epsilon": e, "budget_left": _left(target, e)} for c, e in clients.items()
                ],
            }
        )
    run_spent = max(latest.values()) if latest else None
    return finite_doc(
        {
            "run_id": run["run_id"],
            "enabled": enabled,
            "target_epsilon": target,
            "delta": _number(section.get("delta")) if enabled else None,
            "noise_multiplier": noise,
            "epsilon_spent": run_spent,
            "budget_left": _left(target, run_spent if run_spent is not None else 0.0),
            "rounds": rounds,
            "clients": [
                {"client_id": c, "epsilon_spent": e, "budget_left": _left(target, e)} for c, e in sorted(latest.items())
            ],
        }
    )


__all__ = ["client_view", "event_view", "finite", "privacy_view", "rounds_view", "run_detail", "run_summary"]
