"""Capability-aware plans over separate processes: clients report what each round cost, the coordinator plans
each one's local steps and codec from it, the clients train and send what their plans say, the privacy ledger
counts the steps they took, and the API shows each client's plan with its update."""

from __future__ import annotations

import asyncio
import math
import socket
import time

import pytest
import requests

from contracts.capability import STEPS, TRAIN_S, UPLINK, ClientPlan
from contracts.events import Event, RoundStarted, RunCompleted, UpdateAccepted
from services.coordinator.plans import UNMEASURED
from tests.deployed.world import SMALL_RUN, Deployment, of_type

pytestmark = [pytest.mark.integration, pytest.mark.deployed, pytest.mark.timeout(900)]

CLIENTS, ROUNDS = 2, 3
CODECS = ["fp16", "topk:0.1+int8"]
# A target no client meets on two shared cores: every measured client gets the least work min_work allows.
PLANS = {"adaptive": True, "target_s": 0.05, "min_work": 0.5, "codecs": CODECS}


async def finished(deployment: Deployment) -> list[Event]:
    async with deployment.run_log() as log:
        return await log.until(lambda e: bool(of_type(e, RunCompleted)), what="RunCompleted", within=600)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def api_rounds(deployment: Deployment, run_id: str) -> list[dict]:  # type: ignore[type-arg]
    port = free_port()
    deployment.fleet.start("api", "api", args=["--port", str(port)])
    url, deadline = f"http://127.0.0.1:{port}/api/v1/runs/{run_id}/rounds", time.monotonic() + 120
    while True:
        try:
            response = requests.get(url, timeout=5)
            response.raise_for_status()
            return list(response.json()["rounds"])
        except requests.RequestException:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.5)


def test_measured_clients_train_and_send_what_their_plans_say(deployment: Deployment) -> None:
    deployment.write_config(clients=CLIENTS, rounds=ROUNDS, plans=PLANS)
    deployment.start_coordinator()
    deployment.start_aggregator("aggregator")
    for i in range(CLIENTS):
        deployment.start_client(f"client-{i}")

    events = asyncio.run(finished(deployment))

    assert of_type(events, RunCompleted)[0].reason == "max_rounds"
    started = {e.round: e for e in of_type(events, RoundStarted)}
    accepted = {(u.round, u.client_id): u for u in of_type(events, UpdateAccepted)}
    assert sorted(started) == [1, 2, 3] and len(accepted) == CLIENTS * ROUNDS
    first = started[1]
    assert {c: ClientPlan.from_dict(c, p).why for c, p in first.plans.items()} == dict.fromkeys(
        first.selected, UNMEASURED
    )
    batches = math.ceil(accepted[1, first.selected[0]].num_samples / SMALL_RUN["round"]["batch_size"])
    assert {u.metrics[STEPS] for u in accepted.values() if u.round == 1} == {float(batches)}  # the run's plan
    for round_ in (2, 3):
        for client in started[round_].selected:
            plan = ClientPlan.from_dict(client, started[round_].plans[client])
            update = accepted[round_, client]
            full = math.ceil(update.num_samples / SMALL_RUN["round"]["batch_size"])  # one local epoch
            assert plan.max_steps == math.ceil(PLANS["min_work"] * full), plan  # the least work: the target is tight
            assert update.metrics[STEPS] == plan.max_steps and update.metrics[TRAIN_S] > 0
            assert update.codec == plan.compression in CODECS
            assert "for the run's target 0.05 s" in plan.why
    # the uplink each client measured on its previous upload reached the coordinator and its round-3 plan
    assert all(UPLINK in accepted[3, c].metrics for c in started[3].selected)
    assert all("Mbit/s" in started[3].plans[c]["why"] for c in started[3].selected)
    # The ledger counts the steps taken. The noise was calibrated for three full epochs to spend the budget;
    # one full and two half epochs spend well under it (epsilon grows about as the square root of the steps).
    budget = SMALL_RUN["privacy"]["epsilon"]
    for client in first.selected:
        spent = [accepted[r, client].epsilon or 0.0 for r in (1, 2, 3)]
        assert 0 < spent[0] < spent[1] < spent[2] < 0.9 * budget, spent

    shown = api_rounds(deployment, deployment.run_id)
    assert [r["plans"] for r in shown] == [started[r].plans for r in (1, 2, 3)]
    for view in shown:
        for update in view["accepted"]:
            assert update["plan"] == started[view["round"]].plans[update["client_id"]]
            assert update["aggregated_in"] == view["round"] and update["model_version"] == view["round"] - 1
