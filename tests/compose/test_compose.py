"""compose.yaml end to end: three client replicas finish a two-round DP run, and the round's events
can be read from the `fedbus.inspect` queue through the RabbitMQ management API.
"""

from __future__ import annotations

import base64
import json
import re
import time
import urllib.request
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    from tests.compose.conftest import Stack

# The first test also waits for the fixture: machine setup, the image build and the stack start.
pytestmark = [pytest.mark.compose, pytest.mark.timeout(3600)]

RUN_DEADLINE_S = 900.0
CRASH_LOOP_RESTARTS = 3
ROUND_EVENTS = (
    ("round.started", "RoundStarted"),
    ("round.quorum_reached", "QuorumReached"),
    ("round.aggregated", "RoundAggregated"),
)
ADMIN = ("admin", "fedbus-admin-dev")  # compose.yaml's development default


def _completed_run(stack: Stack) -> dict[str, Any]:
    """Poll the event log until the run completed.

    Fails with the services' logs at the deadline, or as soon as a container is in a crash loop (a role
    that cannot start would otherwise be restarted until the deadline); a later test fails at once.
    """
    if stack.failure is not None:
        pytest.fail(stack.failure)
    started = time.monotonic()
    query = f"SELECT payload FROM events WHERE type = 'RunCompleted' AND run_id = '{stack.run_id}'"
    while time.monotonic() - started < RUN_DEADLINE_S:
        rows = stack.sql(query)
        if rows:
            stack.timings.setdefault("run", time.monotonic() - started)
            payload: dict[str, Any] = json.loads(rows[0])
            return payload
        looping = {name: count for name, count in stack.restarts().items() if count >= CRASH_LOOP_RESTARTS}
        if looping:
            stack.failure = f"containers in a crash loop (restarts: {looping}):\n{stack.logs()}"
            pytest.fail(stack.failure)
        time.sleep(5)
    stack.failure = f"run {stack.run_id} did not complete within {RUN_DEADLINE_S:.0f}s:\n{stack.logs()}"
    pytest.fail(stack.failure)


def _inspect_messages(stack: Stack, queue: str = "fedbus.inspect", encoding: str = "base64") -> list[dict[str, Any]]:
    """Every message in `queue`, requeued (the management UI's "Get messages", Nack requeue)."""
    url = f"http://127.0.0.1:{stack.ports['FEDBUS_RABBITMQ_UI_PORT']}/api/queues/fedbus/{queue}/get"
    truncate = 64 if encoding == "base64" else 1_000_000
    body = json.dumps({"count": 10_000, "ackmode": "ack_requeue_true", "encoding": encoding, "truncate": truncate})
    request = urllib.request.Request(url, data=body.encode(), method="POST")
    request.add_header("Content-Type", "application/json")
    request.add_header("Authorization", "Basic " + base64.b64encode(":".join(ADMIN).encode()).decode())
    with urllib.request.urlopen(request, timeout=30) as response:
        messages: list[dict[str, Any]] = json.loads(response.read())
    return messages


def test_three_client_replicas_complete_a_private_run(stack: Stack) -> None:
    completed = _completed_run(stack)

    registered = [json.loads(row) for row in stack.sql("SELECT payload FROM events WHERE type = 'ClientRegistered'")]
    (created,) = [json.loads(row) for row in stack.sql("SELECT payload FROM events WHERE type = 'RunCreated'")]
    assert created["config"]["clients"] == 3  # FEDBUS_CLIENTS=3, stated once, over the file's 10
    assert completed["rounds"] == 2
    assert len({event["client_id"] for event in registered}) == 3
    assert len({event["capabilities"]["hostname"] for event in registered}) == 3  # three containers
    # The identical replicas claimed one share each of the simulated data set (any/3 in a shared volume).
    logs = stack.compose("logs", "--no-color", "client", check=False).stdout
    assert sorted(set(re.findall(r"simulated share (\d+)/3", logs))) == ["0", "1", "2"], logs[-3000:]


def test_round_events_of_the_run_are_readable_in_the_inspect_queue(stack: Stack) -> None:
    _completed_run(stack)

    messages = _inspect_messages(stack)

    of_run = [m for m in messages if m["properties"].get("headers", {}).get("run_id") == stack.run_id]
    seen = {(m["routing_key"], m["properties"].get("type"), m["properties"]["headers"].get("round")) for m in of_run}
    assert {(key, type_name, r) for key, type_name in ROUND_EVENTS for r in (1, 2)} <= seen
    # The same events as text: the JSON ring is what a person reads in the management UI ("Get messages").
    copies = [m for m in _inspect_messages(stack, "fedbus.inspect.json", "auto") if m["payload_encoding"] == "string"]
    bodies = [json.loads(m["payload"]) for m in copies if m["properties"].get("content_type") == "application/json"]
    aggregated = [b for b in bodies if b["type"] == "RoundAggregated" and b["payload"]["run_id"] == stack.run_id]
    assert sorted(b["payload"]["round"] for b in aggregated) == [1, 2]
    assert all(0.0 < b["payload"]["metrics"]["accuracy"] <= 1.0 for b in aggregated)
    assert {b["event_id"] for b in bodies} <= {m["properties"]["message_id"] for m in messages}
