"""Operator errors told by the deployed roles in one line, exit status 2, without a traceback or a long wait.

Each used to end in a Python traceback, or in a minute and more of retries and then an error that did not
say what was wrong: a bad enrollment token, a database user that does not exist, a plaintext client
against a TLS coordinator (and the other way round), a RabbitMQ URL with the wrong port.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import time
from pathlib import Path

import grpc
import pytest
from sqlalchemy.engine import make_url

from contracts.uploads import ClientCapabilities
from tests.deployed.world import Deployment
from tests.support.certificates import make_pki
from tests.support.processes import fedbus_cli, free_port
from workers.client.transport import FederationClient, tls_mismatch

pytestmark = [pytest.mark.integration, pytest.mark.deployed]

PASSWORD = "pw-s3cret-91"
LIVENESS_S = 30.0  # far below the minute and more of retries these took before
TLS_TOLD_WITHIN_S = 10.0  # the retries of a registration took a minute
EXIT_USAGE = 2


def assert_one_line(done: subprocess.CompletedProcess[str], *expected: str) -> str:
    """The one line `done` printed on stderr, checked for exit status 2, no traceback and `expected`."""
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert done.returncode == EXIT_USAGE, done.stderr
    assert "Traceback" not in done.stderr
    assert len(lines) == 1, done.stderr
    for text in expected:
        assert text in lines[0]
    return lines[0]


def timed(*args: str, env: dict[str, str]) -> tuple[subprocess.CompletedProcess[str], float]:
    started = time.monotonic()
    done = fedbus_cli(*args, env=env, timeout=120)
    return done, time.monotonic() - started


@pytest.mark.parametrize("command", [("db", "upgrade"), ("aggregator",), ("up", "--clients", "1")])
def test_a_database_user_that_does_not_exist_is_one_line_and_exit_2(
    command: tuple[str, ...], amqp_url: str, database_url: str, data_dir: str, tmp_path: Path
) -> None:
    bad = make_url(database_url).set(username="fedbus_nobody", password=PASSWORD).render_as_string(hide_password=False)
    env = {**os.environ, "FEDBUS_AMQP_URL": amqp_url, "FEDBUS_DATABASE_URL": bad, "FEDBUS_DATA_DIR": data_dir}
    args = (*command, "--out", str(tmp_path / "out")) if command[0] == "up" else command

    done = fedbus_cli(*args, env=env)

    line = assert_one_line(done, "the database refused the login", 'role "fedbus_nobody" does not exist')
    assert PASSWORD not in done.stderr + done.stdout, line


def test_a_bad_enrollment_token_is_one_line_and_exit_2(deployment: Deployment, tmp_path: Path) -> None:
    deployment.write_config(clients=1, rounds=1)
    deployment.start_coordinator()
    env = {**deployment.fleet.env, "FEDBUS_ENROLLMENT_TOKEN": "not-the-token", "FEDBUS_STATE_DIR": str(tmp_path)}

    done = fedbus_cli("client", env=env)

    assert_one_line(done, "refused the enrollment token", "FEDBUS_ENROLLMENT_TOKEN", "UNAUTHENTICATED")


def test_a_plaintext_client_against_a_tls_coordinator_is_told_of_a_tls_mismatch_at_once(
    deployment: Deployment, tmp_path: Path
) -> None:
    pki = make_pki(tmp_path / "pki")
    deployment.write_config(clients=1, rounds=1)
    tls = {"FEDBUS_TLS_CERT": str(pki.server_cert), "FEDBUS_TLS_KEY": str(pki.server_key)}
    coordinator = deployment.fleet.start("coordinator", "coordinator", **tls)
    deployment.wait_for_output(coordinator, "coordinator serving gRPC")

    # The transport alone, as `fedbus client` builds it, timed: the CLI first warms its pool up (torch).
    refused, took = asyncio.run(register_plaintext(deployment.fleet.env["FEDBUS_GRPC_ADDRESS"]))
    done = fedbus_cli("client", env={**deployment.fleet.env, "FEDBUS_STATE_DIR": str(tmp_path)})

    assert tls_mismatch(refused) and took < TLS_TOLD_WITHIN_S
    assert_one_line(done, "it looks like a TLS mismatch", "FEDBUS_TLS_CA")


async def register_plaintext(address: str) -> tuple[grpc.aio.AioRpcError, float]:
    client = FederationClient(address, attempts=12)
    started = time.monotonic()
    try:
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await client.register("any-token", ClientCapabilities())
    finally:
        await client.close()
    return refused.value, time.monotonic() - started


def test_a_tls_client_against_a_plaintext_coordinator_is_told_of_a_tls_mismatch_at_once(
    deployment: Deployment, tmp_path: Path
) -> None:
    pki = make_pki(tmp_path / "pki")
    deployment.write_config(clients=1, rounds=1)
    deployment.start_coordinator()
    env = {**deployment.fleet.env, "FEDBUS_TLS_CA": str(pki.ca), "FEDBUS_STATE_DIR": str(tmp_path)}

    done = fedbus_cli("client", env=env)

    assert_one_line(done, "it looks like a TLS mismatch", "this client speaks TLS")


def test_a_rabbitmq_url_with_a_wrong_port_fails_in_seconds_naming_the_url_without_its_password(
    deployment: Deployment,
) -> None:
    deployment.write_config(clients=1, rounds=1)
    port = free_port()
    env = {**deployment.fleet.env, "FEDBUS_AMQP_URL": f"amqp://guest:{PASSWORD}@127.0.0.1:{port}/"}

    done, took = timed("coordinator", env=env)

    assert done.returncode == EXIT_USAGE, done.stderr
    assert "Traceback" not in done.stderr
    assert f"cannot connect to RabbitMQ at 'amqp://guest:***@127.0.0.1:{port}/'" in done.stderr.splitlines()[-1]
    assert PASSWORD not in done.stderr + done.stdout
    assert took < LIVENESS_S
