"""Inputs an outside attack answered with 500 and a traceback: NUL and control characters in ids and query
values, oversized ids, query strings and bodies, deeply nested or non-standard JSON, invalid partitions and
out-of-range numbers. Each is now a 4xx with a JSON error naming the field, and nothing is logged with a
traceback."""

from __future__ import annotations

import json
import logging
import uuid
from collections.abc import Iterator

import pytest
import requests

from services.api.params import MAX_JSON_DEPTH, MAX_QUERY_BYTES
from services.api.server import ApiServer
from tests.api.conftest import ADMIN_TOKEN, VIEWER_TOKEN, auth

VIEW = auth(VIEWER_TOKEN)
ADMIN = auth(ADMIN_TOKEN)
LONG_ID = "r" * 201


@pytest.fixture(autouse=True)
def no_tracebacks(caplog: pytest.LogCaptureFixture) -> Iterator[None]:
    """Every test here also asserts that the server logged no traceback and no error."""
    with caplog.at_level(logging.INFO):
        yield
    bad = [r.getMessage() for r in caplog.records if r.exc_info or r.levelno >= logging.ERROR]
    assert bad == []


def refused(response: requests.Response, status: int, field: str | None) -> bool:
    body = response.json()
    return response.status_code == status and bool(body["error"]) and body.get("field") == field


@pytest.mark.parametrize(
    ("method", "path", "field"),
    [
        ("GET", "/api/v1/runs/a%00b", "run_id"),
        ("GET", "/api/v1/runs/a%00b/rounds", "run_id"),
        ("GET", "/api/v1/runs/a%00b/rounds/1", "run_id"),
        ("GET", "/api/v1/runs/a%00b/privacy", "run_id"),
        ("GET", "/api/v1/runs/a%1bb", "run_id"),
        ("GET", f"/api/v1/runs/{LONG_ID}", "run_id"),
        ("GET", "/api/v1/runs/run-a/rounds/1%00", "round"),
        ("GET", "/api/v1/clients/c%00", "client_id"),
        ("GET", f"/api/v1/clients/{LONG_ID}", "client_id"),
        ("POST", "/api/v1/runs/a%00b/stop", "run_id"),
        ("POST", "/api/v1/clients/c%00/evict", "client_id"),
        ("GET", "/api/v1/events?run_id=a%00b", "run_id"),
        ("GET", "/api/v1/events?run_id=a%0a", "run_id"),
        ("GET", "/api/v1/stream?run_id=a%00b", "run_id"),
        ("GET", "/api/v1/events?type=%00", "type"),
        ("GET", "/api/v1/events?junk=" + "x" * MAX_QUERY_BYTES, "query"),
    ],
)
def test_control_characters_and_oversized_path_or_query_values_are_400(
    api: ApiServer, method: str, path: str, field: str
) -> None:
    response = requests.request(method, api.url + path, headers=ADMIN, timeout=10)

    assert refused(response, 400, field), response.text


def post_runs(api: ApiServer, data: bytes) -> requests.Response:
    headers = ADMIN | {"Content-Type": "application/json"}
    return requests.post(api.url + "/api/v1/runs", data=data, headers=headers, timeout=10)


@pytest.mark.parametrize(
    "data",
    [
        b"[" * 100_000,  # RecursionError in the JSON parser
        b'{"round": ' * (MAX_JSON_DEPTH + 1) + b"1" + b"}" * (MAX_JSON_DEPTH + 1),
        b'{"rounds": NaN}',
        b'{"round": {"lr": Infinity}}',
        b'{"rounds": ' + b"9" * 5000 + b"}",  # past Python's integer-string limit
        b'{"rounds": 3',
        b"\xff\xfe{}",
        b"\x0c",  # whitespace to bytes.strip(), not to JSON: once taken for an empty body and a default run
        b"\x0b{}",
    ],
)
def test_bodies_that_are_not_plain_shallow_json_are_400(api: ApiServer, data: bytes) -> None:
    assert refused(post_runs(api, data), 400, "body")


def test_a_body_past_max_body_bytes_is_413(api: ApiServer) -> None:
    data = b'{"reason": "' + b"x" * (1 << 20) + b'"}'

    response = requests.post(api.url + "/api/v1/clients/c-alpha/evict", data=data, headers=ADMIN, timeout=10)

    assert refused(response, 413, "body")


@pytest.mark.parametrize("reason", ["a\x00b", "line\nbreak", "\ud800", "bell\x07"])
def test_an_eviction_reason_with_control_characters_is_400(api: ApiServer, reason: str) -> None:
    data = json.dumps({"reason": reason}).encode()  # escapes, so the JSON itself is well formed

    response = requests.post(api.url + "/api/v1/clients/c-alpha/evict", data=data, headers=ADMIN, timeout=10)

    assert refused(response, 400, "reason"), response.text


def test_a_run_id_with_a_trailing_newline_is_400(api: ApiServer) -> None:
    response = requests.post(api.url + "/api/v1/runs", json={"run_id": "run-x\n"}, headers=ADMIN, timeout=10)

    assert refused(response, 400, "run_id")


@pytest.mark.parametrize(
    "partition",
    ["shards:0", "shards:", "shards:-1", "shards:1.5", "shards:\u00b2", "shards:1000000", "dirichlet:-1",
     "dirichlet:0", "dirichlet:abc", "dirichlet:", "dirichlet:nan", "dirichlet:inf", "dirichlet:1e999",
     "iid:2", "zipf", " iid", "iid\x00"],
)  # fmt: skip
def test_an_invalid_partition_is_400_and_starts_nothing(api: ApiServer, partition: str) -> None:
    run_id = f"run-{uuid.uuid4().hex[:8]}"

    response = requests.post(
        api.url + "/api/v1/runs", json={"run_id": run_id, "partition": partition}, headers=ADMIN, timeout=10
    )

    assert refused(response, 400, "partition"), response.text
    assert requests.get(f"{api.url}/api/v1/runs/{run_id}", headers=VIEW, timeout=10).status_code == 404


@pytest.mark.parametrize("partition", ["iid", "dirichlet:0.5", "dirichlet:1e3", "shards:2"])
def test_a_valid_partition_starts_a_run(api: ApiServer, partition: str) -> None:
    response = requests.post(api.url + "/api/v1/runs", json={"partition": partition}, headers=ADMIN, timeout=10)

    assert response.status_code == 201, response.text
    assert response.json()["config"]["partition"] == partition


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"rounds": -3}, "rounds"),
        ({"clients": 0}, "clients"),
        ({"clients": 10**30}, "clients"),
        ({"seed": -1}, "seed"),
        ({"patience": 1.5}, "patience"),
        ({"target_accuracy": 0}, "target_accuracy"),
        ({"eval_limit": 0}, "eval_limit"),
        ({"round": {"clients_per_round": 0}}, "round.clients_per_round"),
        ({"round": {"clients_per_round": 1.01}}, "round.clients_per_round"),
        ({"round": {"quorum": -0.5}}, "round.quorum"),
        ({"round": {"timeout_s": 1e300}}, "round.timeout_s"),
        ({"round": {"max_update_bytes": 2**70}}, "round.max_update_bytes"),
        ({"round": {"trim_fraction": 0.5}}, "round.trim_fraction"),
        ({"privacy": {"max_grad_norm": 0}}, "privacy.max_grad_norm"),
        ({"privacy": [[[1]]]}, "privacy"),
    ],
)
def test_out_of_range_numbers_are_400_naming_the_field(api: ApiServer, body: object, field: str) -> None:
    response = requests.post(api.url + "/api/v1/runs", json=body, headers=ADMIN, timeout=10)

    assert refused(response, 400, field), response.text
