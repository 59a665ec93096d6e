"""The read and management endpoints over a seeded log, on SQLite and on PostgreSQL, through waitress."""

from __future__ import annotations

import uuid

import pytest
import requests
import schemathesis

from contracts.catalog import MODELS
from contracts.events import ClientRegistered
from services.api.openapi import openapi_document
from services.api.server import ApiServer
from tests.api.conftest import ADMIN_TOKEN, VIEWER_TOKEN, auth, on_log
from tests.api.world import (
    BRAVO_PLAN,
    CLIENTS,
    FEDBUFF_CLIENTS,
    TARGET_EPSILON,
    accuracy_of,
    append,
    loss_of,
    play_fedbuff,
)

VIEW = auth(VIEWER_TOKEN)
ADMIN = auth(ADMIN_TOKEN)
DOCUMENT = schemathesis.openapi.from_dict(openapi_document())


def get(api: ApiServer, path: str, headers: dict[str, str] = VIEW) -> requests.Response:
    return requests.get(api.url + path, headers=headers, timeout=10)


def post(api: ApiServer, path: str, body: object = None, headers: dict[str, str] = ADMIN) -> requests.Response:
    return requests.post(api.url + path, json=body, headers=headers, timeout=10)


def test_runs_lists_the_seeded_run_with_progress_and_model(api: ApiServer) -> None:
    response = get(api, "/api/v1/runs")

    assert response.status_code == 200
    run = next(r for r in response.json()["runs"] if r["run_id"] == "run-a")
    assert run["status"] == "running"
    assert run["rounds_completed"] == 2 and run["rounds_planned"] == 5
    assert run["model_version"] == 2 and len(run["model_digest"]) == 64
    assert run["metrics"] == {"accuracy": accuracy_of(2), "loss": loss_of(2)}


def test_run_detail_carries_the_config(api: ApiServer) -> None:
    run = get(api, "/api/v1/runs/run-a").json()

    assert run["config"]["privacy"]["epsilon"] == TARGET_EPSILON
    assert run["config"]["clients"] == len(CLIENTS)


def test_rounds_show_selection_accepted_and_rejected_updates_with_reasons(api: ApiServer) -> None:
    body = get(api, "/api/v1/runs/run-a/rounds").json()

    first = body["rounds"][0]
    assert [r["round"] for r in body["rounds"]] == [1, 2]
    assert first["status"] == "aggregated"
    assert first["selected"] == list(CLIENTS)
    assert [u["client_id"] for u in first["accepted"]] == list(CLIENTS[:2])
    assert first["rejected"] == [
        {"client_id": CLIENTS[2], "reason": "norm", "detail": "norm 9.1 > 5", "at": first["rejected"][0]["at"]}
    ]
    assert first["metrics"]["accuracy"] == accuracy_of(1)
    assert first["durations"]["aggregation_s"] == 0.25
    assert first["durations"]["total_s"] >= 0
    assert first["new_model_version"] == 1


def test_rounds_show_each_clients_plan_and_the_round_that_aggregated_each_update(api: ApiServer) -> None:
    response = get(api, "/api/v1/runs/run-a/rounds")

    DOCUMENT["/api/v1/runs/{run_id}/rounds"]["GET"].validate_response(response)
    first = response.json()["rounds"][0]
    assert first["plans"] == {CLIENTS[1]: BRAVO_PLAN}
    assert [(u["client_id"], u["plan"]) for u in first["accepted"]] == [(CLIENTS[0], None), (CLIENTS[1], BRAVO_PLAN)]
    assert [u["aggregated_in"] for u in first["accepted"]] == [1, 1]
    assert [u["model_version"] for u in first["accepted"]] == [None, None]  # written without it: not recorded


def test_a_fedbuff_update_carried_past_its_buffer_shows_the_round_that_aggregated_it(
    api: ApiServer, database_url: str
) -> None:
    run_id = f"run-{uuid.uuid4().hex[:8]}"
    on_log(database_url, lambda log: play_fedbuff(log, run_id))

    listed, one = get(api, f"/api/v1/runs/{run_id}/rounds"), get(api, f"/api/v1/runs/{run_id}/rounds/1")

    DOCUMENT["/api/v1/runs/{run_id}/rounds"]["GET"].validate_response(listed)
    DOCUMENT["/api/v1/runs/{run_id}/rounds/{round}"]["GET"].validate_response(one)
    rounds = listed.json()["rounds"]
    assert one.json() == rounds[0]
    shown = {(r["round"], u["client_id"]): u for r in rounds for u in r["accepted"]}
    seen = {key: (u["late"], u["model_version"], u["aggregated_in"]) for key, u in shown.items()}
    assert seen == {
        (1, FEDBUFF_CLIENTS[0]): (False, 0, 1),
        (1, FEDBUFF_CLIENTS[1]): (False, 0, 1),
        (1, FEDBUFF_CLIENTS[2]): (True, 0, 2),  # late for its buffer, carried into round 2's
        (2, FEDBUFF_CLIENTS[0]): (False, 1, 2),
        (2, FEDBUFF_CLIENTS[1]): (True, 1, None),  # carried into round 3's buffer, still open
    }
    assert [r["plans"] for r in rounds] == [{}, {}, {}]
    assert all(u["plan"] is None for u in shown.values())


def test_one_round_is_served_and_an_unknown_round_is_404(api: ApiServer) -> None:
    assert get(api, "/api/v1/runs/run-a/rounds/2").json()["round"] == 2
    missing = get(api, "/api/v1/runs/run-a/rounds/99")
    assert missing.status_code == 404 and "99" in missing.json()["error"]


def test_privacy_reports_epsilon_per_client_and_round_and_the_budget_left(api: ApiServer) -> None:
    privacy = get(api, "/api/v1/runs/run-a/privacy").json()

    assert privacy["target_epsilon"] == TARGET_EPSILON
    assert privacy["noise_multiplier"] == 1.1
    assert [r["round"] for r in privacy["rounds"]] == [1, 2]
    assert privacy["rounds"][1]["epsilon"] == pytest.approx(1.1)
    assert privacy["epsilon_spent"] == pytest.approx(1.1)
    assert privacy["budget_left"] == pytest.approx(TARGET_EPSILON - 1.1)
    bravo = next(c for c in privacy["clients"] if c["client_id"] == CLIENTS[1])
    assert bravo["budget_left"] == pytest.approx(TARGET_EPSILON - 1.1)


def test_clients_show_capabilities_rounds_joined_and_epsilon(api: ApiServer) -> None:
    clients = {c["client_id"]: c for c in get(api, "/api/v1/clients").json()["clients"]}

    alpha = clients[CLIENTS[0]]
    assert alpha["capabilities"]["device"] == "cpu"
    assert alpha["rounds_joined"] == 2
    assert alpha["epsilon"] == pytest.approx(1.0)
    assert alpha["last_seen"] >= alpha["registered_at"]
    assert clients[CLIENTS[2]]["rounds_joined"] == 0


def test_events_are_paged_by_position_and_filtered(api: ApiServer) -> None:
    first = get(api, "/api/v1/events?limit=3").json()
    second = get(api, f"/api/v1/events?limit=3&after={first['next_after']}").json()
    aggregated = get(api, "/api/v1/events?type=RoundAggregated&run_id=run-a&round=2").json()["events"]

    positions = [e["position"] for e in first["events"] + second["events"]]
    assert positions == sorted(positions) and len(set(positions)) == 6
    assert [(e["type"], e["round"]) for e in aggregated] == [("RoundAggregated", 2)]
    assert aggregated[0]["payload"]["metrics"]["accuracy"] == accuracy_of(2)


@pytest.mark.parametrize(
    ("path", "field"),
    [
        ("/api/v1/events?limit=0", "limit"),
        ("/api/v1/events?limit=501", "limit"),
        ("/api/v1/events?after=-1", "after"),
        ("/api/v1/events?after=abc", "after"),
        ("/api/v1/events?round=x", "round"),
        ("/api/v1/events?type=NoSuchEvent", "type"),
        ("/api/v1/runs/run-a/rounds/first", "round"),
    ],
)
def test_malformed_queries_are_400_naming_the_field(api: ApiServer, path: str, field: str) -> None:
    response = get(api, path)

    assert response.status_code == 400
    assert response.json()["field"] == field


@pytest.mark.parametrize(
    "path", ["/api/v1/runs/nope", "/api/v1/runs/nope/rounds", "/api/v1/runs/nope/privacy", "/api/v1/clients/nope"]
)
def test_unknown_things_are_404_with_an_error(api: ApiServer, path: str) -> None:
    response = get(api, path)

    assert response.status_code == 404
    assert "nope" in response.json()["error"]


def test_starting_a_run_appends_run_created_and_a_second_start_conflicts(api: ApiServer) -> None:
    run_id = f"run-{uuid.uuid4().hex[:8]}"

    created = post(api, "/api/v1/runs", {"run_id": run_id, "rounds": 3, "round": {"quorum": 0.5}})
    again = post(api, "/api/v1/runs", {"run_id": run_id})

    assert created.status_code == 201, created.text
    assert created.headers["Location"] == f"/api/v1/runs/{run_id}"
    run = get(api, f"/api/v1/runs/{run_id}").json()
    assert run["status"] == "running" and run["config"]["rounds"] == 3 and run["config"]["round"]["quorum"] == 0.5
    assert again.status_code == 409


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"rounds": 0}, "rounds"),
        ({"round": {"quorum": 2}}, "round.quorum"),
        ({"privacy": {"epsilon": -1}}, "privacy.epsilon"),
        ({"no_such_option": 1}, "no_such_option"),
        ({"compression": 5}, "compression"),
        ({"privacy": {"enabled": "yes"}}, "privacy.enabled"),
        ({"run_id": "bad id!"}, "run_id"),
        ({"task": "resnet_no_such"}, "task"),  # would start a run no aggregator can initialise
        ({"task": "not a task!"}, "task"),
        ({"init_model": "0" * 64}, "init_model"),  # no such model in the log
        ({"model": "cifar10_cnn", "dataset": "mnist"}, "model"),  # the pre-task spelling, inconsistent
        ({"privacy": {"enabled": False, "delta": 0.5}}, "privacy.delta"),  # checked even with DP off
        ({"privacy": {"enabled": False, "epsilon": 0}}, "privacy.epsilon"),
        ([1, 2], "body"),
    ],
)
def test_a_bad_run_config_is_400_naming_the_field(api: ApiServer, body: object, field: str) -> None:
    response = post(api, "/api/v1/runs", body)

    assert response.status_code == 400
    assert response.json()["field"] == field


def test_an_unknown_task_is_400_listing_the_tasks_and_starts_nothing(api: ApiServer) -> None:
    run_id = f"run-{uuid.uuid4().hex[:8]}"

    response = post(api, "/api/v1/runs", {"run_id": run_id, "task": "nope"})

    assert response.status_code == 400
    assert response.json()["field"] == "task"
    assert all(name in response.json()["error"] for name in MODELS)
    assert get(api, f"/api/v1/runs/{run_id}").status_code == 404


def test_a_body_that_is_not_json_is_400(api: ApiServer) -> None:
    response = requests.post(api.url + "/api/v1/runs", data=b"{nope", headers=ADMIN, timeout=10)

    assert response.status_code == 400 and response.json()["field"] == "body"


def test_stopping_a_run_completes_it_as_stopped_once(api: ApiServer) -> None:
    run_id = f"run-{uuid.uuid4().hex[:8]}"
    post(api, "/api/v1/runs", {"run_id": run_id})

    stopped = post(api, f"/api/v1/runs/{run_id}/stop")
    again = post(api, f"/api/v1/runs/{run_id}/stop")

    assert stopped.status_code == 200 and stopped.json()["status"] == "stopped"
    assert get(api, f"/api/v1/runs/{run_id}").json()["status"] == "stopped"
    assert again.status_code == 409
    assert post(api, "/api/v1/runs/nope/stop").status_code == 404


def test_evicting_a_client_marks_it_evicted_once(api: ApiServer, database_url: str) -> None:
    client = f"c-{uuid.uuid4().hex[:8]}"
    on_log(database_url, lambda log: append(log, f"client:{client}", ClientRegistered(client_id=client)))

    evicted = post(api, f"/api/v1/clients/{client}/evict", {"reason": "misbehaving"})
    again = post(api, f"/api/v1/clients/{client}/evict")

    assert evicted.status_code == 200
    shown = get(api, f"/api/v1/clients/{client}").json()
    assert shown["evicted"] is True and shown["evicted_reason"] == "misbehaving"
    assert again.status_code == 409
    assert post(api, "/api/v1/clients/nope/evict").status_code == 404
    assert post(api, f"/api/v1/clients/{client}/evict", {"reason": 7}).json()["field"] == "reason"


def test_health_and_readiness_answer(api: ApiServer) -> None:
    assert get(api, "/healthz", {}).json() == {"status": "ok"}
    ready = get(api, "/readyz", {})
    assert ready.status_code == 200 and ready.json()["checks"]["database"] == "ok"
