"""The API's round views: each client's plan, and the round whose aggregation took each update (FedBuff carries
an update that came after its buffer closed into the next one, so its own round is not always where it counted)."""

from __future__ import annotations

from typing import Any

from services.api.presenters import rounds_view

PLAN = {"max_steps": 5, "compression": "fp16", "why": "slow: 5 of 20 steps fit the target"}


def round_row(number: int, status: str, update_ids: list[str] | None, plans: Any) -> dict[str, Any]:
    return {
        "round": number, "attempt": 1, "status": status, "model_version": number - 1, "model_digest": "m",
        "selected": ["a", "b"], "plans": plans, "deadline": 9.0, "started_at": 1.0, "quorum_at": None,
        "aggregated_at": None, "update_ids": update_ids, "partial": False, "new_model_version": None,
        "new_model_digest": None, "metrics": None, "duration_s": None, "failure_reason": None,
    }  # fmt: skip


def update_row(number: int, client: str, *, late: bool = False, model_version: int | None = None) -> dict[str, Any]:
    return {
        "round": number, "update_id": f"u{number}{client}", "client_id": client, "num_samples": 10, "digest": "d",
        "wire_bytes": 1, "raw_bytes": 4, "ratio": 4.0, "epsilon": None, "late": late, "model_version": model_version,
        "metrics": {}, "accepted_at": 2.0,
    }  # fmt: skip


def test_each_update_shows_the_round_whose_aggregation_took_it_and_none_before_one_has() -> None:
    rounds = [
        round_row(1, "aggregated", ["u1a"], {}),
        round_row(2, "aggregated", ["u1b", "u2a"], {}),  # u1b: late for round 1, carried
        round_row(3, "quorum", ["u2b"], {}),  # closed, not aggregated yet
        round_row(4, "failed", ["u3a"], {}),  # its aggregation never finished
    ]
    updates = [
        update_row(1, "a", model_version=0),
        update_row(1, "b", late=True, model_version=0),
        update_row(2, "a", model_version=1),
        update_row(2, "b", late=True),
        update_row(3, "a", model_version=2),
    ]

    views = rounds_view(rounds, updates, [], [])

    shown = [(u["update_id"], u["model_version"], u["aggregated_in"]) for view in views for u in view["accepted"]]
    assert shown == [("u1a", 0, 1), ("u1b", 0, 2), ("u2a", 1, 2), ("u2b", None, None), ("u3a", 2, None)]


def test_rounds_show_their_plans_as_recorded_and_each_update_its_clients_plan() -> None:
    rounds = [round_row(1, "open", None, {"b": PLAN}), round_row(2, "open", None, None)]  # 2: before revision 0003
    updates = [update_row(1, "a"), update_row(1, "b"), update_row(2, "b")]

    views = rounds_view(rounds, updates, [], [])

    assert [view["plans"] for view in views] == [{"b": PLAN}, None]
    assert [[u["plan"] for u in view["accepted"]] for view in views] == [[None, PLAN], [None]]
