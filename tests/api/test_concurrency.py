"""Many requests at once through waitress: every one answered, one loop thread and one engine per process,
no event-loop errors (the asyncpg pool must stay on the loop that made it)."""

from __future__ import annotations

import logging
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
import requests

import persistence.sql_event_log
from services.api.loop_thread import THREAD_NAME
from tests.api.conftest import TOKENS, VIEWER_TOKEN, auth, serving

PATHS = (
    "/api/v1/runs",
    "/api/v1/runs/run-a",
    "/api/v1/runs/run-a/rounds",
    "/api/v1/runs/run-a/privacy",
    "/api/v1/clients",
    "/api/v1/events?limit=50",
    "/readyz",
    "/metrics",
)
REQUESTS = 50


def test_fifty_concurrent_requests_share_one_loop_thread_and_one_engine(
    database_url: str, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    engines: list[Any] = []
    real_create_engine = persistence.sql_event_log.create_engine

    def counting(*args: Any, **kwargs: Any) -> Any:
        engines.append(args)
        return real_create_engine(*args, **kwargs)

    monkeypatch.setattr(persistence.sql_event_log, "create_engine", counting)
    loops_before = sum(t.name == THREAD_NAME for t in threading.enumerate())

    with caplog.at_level(logging.WARNING), serving(database_url, tokens=TOKENS) as server:
        barrier = threading.Barrier(REQUESTS)

        def fetch(index: int) -> int:
            barrier.wait(timeout=30)  # all start together
            path = PATHS[index % len(PATHS)]
            return requests.get(server.url + path, headers=auth(VIEWER_TOKEN), timeout=60).status_code

        with ThreadPoolExecutor(max_workers=REQUESTS) as pool:
            statuses = list(pool.map(fetch, range(REQUESTS)))
        loop_threads = sum(t.name == THREAD_NAME for t in threading.enumerate()) - loops_before

    assert statuses == [200] * REQUESTS
    assert loop_threads == 1
    assert len(engines) == 1
    problems = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR or "loop" in r.getMessage()]
    assert problems == []


def test_closing_the_server_ends_its_loop_thread(sqlite_url: str) -> None:
    before = sum(t.name == THREAD_NAME for t in threading.enumerate())

    with serving(sqlite_url) as server:
        requests.get(server.url + "/api/v1/runs", timeout=10)

    assert sum(t.name == THREAD_NAME for t in threading.enumerate()) == before
