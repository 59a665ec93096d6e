"""GET /api/v1/stream: new log events arrive as server-sent events; a reconnect resumes by Last-Event-ID."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator

import pytest
import requests

from services.api.server import ApiServer
from tests.api.conftest import TOKENS, VIEWER_TOKEN, auth, on_log, serving
from tests.api.world import play_round

DEADLINE_S = 20.0


@pytest.fixture
def live(fresh_sqlite: str) -> Iterator[tuple[ApiServer, str]]:
    with serving(fresh_sqlite, tokens=TOKENS, stream_poll_s=0.05, stream_max_s=30) as server:
        yield server, fresh_sqlite


def read_events(response: requests.Response, count: int) -> list[dict[str, str]]:
    """Parse server-sent events off the wire until `count` arrived or the deadline passed."""
    events: list[dict[str, str]] = []
    current: dict[str, str] = {}
    deadline = time.monotonic() + DEADLINE_S
    for line in response.iter_lines(decode_unicode=True):
        if line == "" and "event" in current:
            events.append(current)
            current = {}
            if len(events) >= count:
                return events
        elif line and not line.startswith(":"):
            key, _, value = line.partition(": ")
            current[key] = value
        if time.monotonic() > deadline:
            break
    raise AssertionError(f"only {len(events)} of {count} events arrived: {events}")


def test_events_appended_after_connecting_arrive_in_order(live: tuple[ApiServer, str]) -> None:
    server, url = live
    with requests.get(server.url + "/api/v1/stream", headers=auth(VIEWER_TOKEN), stream=True, timeout=30) as stream:
        on_log(url, lambda log: play_round(log, "run-a", 3))

        events = read_events(stream, 6)

    assert [e["event"] for e in events][:1] == ["RoundStarted"]
    assert events[-1]["event"] == "RoundAggregated"
    ids = [int(e["id"]) for e in events]
    assert ids == sorted(ids)
    assert json.loads(events[-1]["data"])["payload"]["round"] == 3


def test_a_reconnect_with_last_event_id_resumes_after_it(live: tuple[ApiServer, str]) -> None:
    server, _ = live
    headers = auth(VIEWER_TOKEN) | {"Last-Event-ID": "3"}
    with requests.get(
        server.url + "/api/v1/stream?type=RoundAggregated", headers=headers, stream=True, timeout=30
    ) as s:
        events = read_events(s, 2)

    assert [json.loads(e["data"])["round"] for e in events] == [1, 2]
    assert all(int(e["id"]) > 3 for e in events)


def test_a_malformed_resume_position_is_400(live: tuple[ApiServer, str]) -> None:
    server, _ = live
    headers = auth(VIEWER_TOKEN) | {"Last-Event-ID": "yesterday"}

    response = requests.get(server.url + "/api/v1/stream", headers=headers, timeout=10)

    assert response.status_code == 400 and response.json()["field"] == "Last-Event-ID"
