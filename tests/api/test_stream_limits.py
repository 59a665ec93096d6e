"""Event streams cannot stall the API: they are bounded (503 with Retry-After past FEDBUS_API_MAX_STREAMS),
a client that never reads or goes away gives its slot back, and /healthz and reads answer throughout."""

from __future__ import annotations

import socket
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack

import pytest
import requests

from contracts.errors import ConfigError
from services.api.server import ApiServer
from services.api.settings import ApiSettings
from tests.api.conftest import TOKENS, VIEWER_TOKEN, auth, serving

THREADS = 6  # few workers, so that streams holding them all would show at once
MAX_STREAMS = 2
LIVENESS_S = 5.0  # generous: a liveness check, not a speed assertion
DEADLINE_S = 15.0
VIEW = auth(VIEWER_TOKEN)


BOUNDED = {"threads": THREADS, "max_streams": MAX_STREAMS, "stream_poll_s": 0.05}


@pytest.fixture
def bounded(database_url: str) -> Iterator[ApiServer]:
    with serving(database_url, tokens=TOKENS, **BOUNDED, stream_max_s=60.0) as server:
        yield server


def open_stream(server: ApiServer, query: str = "") -> requests.Response:
    return requests.get(f"{server.url}/api/v1/stream{query}", headers=VIEW, stream=True, timeout=LIVENESS_S)


def never_reading(server: ApiServer) -> socket.socket:
    """A client that asks for a stream and then never reads a byte (its receive buffer kept small)."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1024)
    sock.connect(("127.0.0.1", server.port))
    request = f"GET /api/v1/stream?after=0 HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {VIEWER_TOKEN}\r\n\r\n"
    sock.sendall(request.encode())
    return sock


def open_streams(server: ApiServer) -> float:
    text = requests.get(server.url + "/metrics", timeout=LIVENESS_S).text
    line = next(line for line in text.splitlines() if line.startswith("fedbus_api_open_streams "))
    return float(line.split()[1])


def eventually(check: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + DEADLINE_S
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {DEADLINE_S} s: {what}")
        time.sleep(0.05)


def assert_alive(server: ApiServer) -> None:
    assert requests.get(server.url + "/healthz", timeout=LIVENESS_S).status_code == 200
    assert requests.get(server.url + "/readyz", timeout=LIVENESS_S).status_code == 200
    assert requests.get(server.url + "/api/v1/runs", headers=VIEW, timeout=LIVENESS_S).status_code == 200


def test_streams_past_the_bound_get_503_and_health_and_reads_still_answer(bounded: ApiServer) -> None:
    with ExitStack() as held:
        for _ in range(MAX_STREAMS):
            held.callback(never_reading(bounded).close)
        eventually(lambda: open_streams(bounded) == MAX_STREAMS, "the silent clients hold every slot")

        excess = [held.enter_context(open_stream(bounded)) for _ in range(THREADS)]
        refusals = [(r.status_code, r.json()["error"], int(r.headers["Retry-After"])) for r in excess]

        assert_alive(bounded)
    assert {status for status, _, _ in refusals} == {503}
    assert all(error and retry_after > 0 for _, error, retry_after in refusals)


def test_a_client_that_never_reads_gives_its_slot_back_when_the_stream_times_out(database_url: str) -> None:
    with serving(database_url, tokens=TOKENS, **BOUNDED, stream_max_s=2.0) as server, ExitStack() as held:
        for _ in range(MAX_STREAMS):
            held.callback(never_reading(server).close)
        eventually(lambda: open_streams(server) == MAX_STREAMS, "the silent clients hold every slot")

        eventually(lambda: open_streams(server) == 0, "stream_max_s ends the silent streams")
        with open_stream(server) as again:
            assert again.status_code == 200


def test_streams_whose_clients_went_away_free_their_workers_at_once(bounded: ApiServer) -> None:
    for _ in range(THREADS):  # pre-fix, each dropped stream kept its worker until two keep-alives failed
        with open_stream(bounded) as dropped:
            assert dropped.status_code == 200
            next(dropped.iter_content(16))
        eventually(lambda: open_streams(bounded) == 0, "a dropped stream gives its slot back")

    assert_alive(bounded)


def test_a_stream_ends_after_stream_max_bytes_and_a_resume_gets_the_rest(database_url: str) -> None:
    with serving(database_url, tokens=TOKENS, stream_poll_s=0.05, stream_max_bytes=2048) as server:
        with open_stream(server, "?after=0") as first:
            body = b"".join(first.iter_content(1024))  # ends: the server closes the stream
        last_id = [line for line in body.decode().splitlines() if line.startswith("id: ")][-1].removeprefix("id: ")
        with open_stream(server, f"?after={last_id}") as resumed:
            lines = resumed.iter_lines(decode_unicode=True)
            next_id = next(line for line in lines if line.startswith("id: ")).removeprefix("id: ")

    assert len(body) <= 2048 and body.count(b"\nevent: ") >= 2
    assert int(next_id) > int(last_id)


def test_head_on_the_stream_answers_headers_without_taking_a_slot(bounded: ApiServer) -> None:
    heads = [requests.head(bounded.url + "/api/v1/stream", headers=VIEW, timeout=LIVENESS_S) for _ in range(THREADS)]

    assert {r.status_code for r in heads} == {200}
    assert open_streams(bounded) == 0


@pytest.mark.parametrize(
    ("options", "field"),
    [
        ({"threads": 4, "max_streams": 3}, "max_streams"),
        ({"max_streams": 0}, "max_streams"),
        ({"stream_max_s": float("nan")}, "stream_max_s"),
        ({"stream_max_bytes": 64 << 20}, "stream_max_bytes"),
        ({"max_body_bytes": 0}, "max_body_bytes"),
    ],
)
def test_stream_and_body_limits_are_checked(options: dict[str, float], field: str) -> None:
    with pytest.raises(ConfigError) as error:
        ApiSettings(**options)  # type: ignore[arg-type]

    assert error.value.field == field


def test_the_limits_come_from_the_environment() -> None:
    env = {"FEDBUS_API_MAX_STREAMS": "2", "FEDBUS_API_STREAM_MAX_S": "30", "FEDBUS_API_MAX_BODY_BYTES": "4096"}

    settings = ApiSettings.from_env(env)

    assert (settings.max_streams, settings.stream_max_s, settings.max_body_bytes) == (2, 30.0, 4096)
    with pytest.raises(ConfigError) as error:
        ApiSettings.from_env({"FEDBUS_API_MAX_STREAMS": "many"})
    assert error.value.field == "FEDBUS_API_MAX_STREAMS"
