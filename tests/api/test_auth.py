"""Bearer tokens and roles: 401 without or with a bad token, 403 for the wrong role, public endpoints,
management off without tokens, tokens never logged, and no open API on a non-loopback address."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from contracts.errors import ConfigError
from services.api.server import ApiServer
from services.api.settings import ApiSettings, Role, parse_tokens
from services.cli.main import main
from tests.api.conftest import ADMIN_TOKEN, TOKENS, VIEWER_TOKEN, serving

READ = ("GET", "/api/v1/runs")
MANAGE = ("POST", "/api/v1/runs/nope/stop")  # admin passes the gate, then 404: no run to stop


@pytest.fixture(scope="module")
def guarded(sqlite_url: str) -> Iterator[ApiServer]:
    with serving(sqlite_url, tokens=TOKENS) as server:
        yield server


@pytest.fixture(scope="module")
def open_api(sqlite_url: str) -> Iterator[ApiServer]:
    with serving(sqlite_url) as server:
        yield server


def call(server: ApiServer, method: str, path: str, header: str | None) -> requests.Response:
    headers = {} if header is None else {"Authorization": header}
    return requests.request(method, server.url + path, headers=headers, timeout=10)


@pytest.mark.parametrize(
    ("action", "header", "status"),
    [
        (READ, None, 401),
        (READ, "Bearer wrong-token", 401),
        (READ, f"Basic {VIEWER_TOKEN}", 401),
        (READ, f"Bearer {VIEWER_TOKEN}", 200),
        (READ, f"Bearer {ADMIN_TOKEN}", 200),
        (MANAGE, None, 401),
        (MANAGE, "Bearer wrong-token", 401),
        (MANAGE, f"Bearer {VIEWER_TOKEN}", 403),
        (MANAGE, f"Bearer {ADMIN_TOKEN}", 404),
    ],
)
def test_the_role_of_the_token_decides(
    guarded: ApiServer, action: tuple[str, str], header: str | None, status: int
) -> None:
    response = call(guarded, *action, header)

    assert response.status_code == status
    assert "error" in response.json() or status == 200


@pytest.mark.parametrize("path", ["/healthz", "/readyz", "/metrics", "/openapi.json", "/", "/static/dashboard.js"])
def test_public_endpoints_need_no_token(guarded: ApiServer, path: str) -> None:
    assert call(guarded, "GET", path, None).status_code == 200


def test_a_query_token_is_accepted_only_on_the_event_stream(guarded: ApiServer) -> None:
    plain = requests.get(f"{guarded.url}/api/v1/runs?token={VIEWER_TOKEN}", timeout=10)
    with requests.get(f"{guarded.url}/api/v1/stream?token={VIEWER_TOKEN}", stream=True, timeout=10) as stream:
        streamed = stream.status_code

    assert plain.status_code == 401
    assert streamed == 200


def test_without_tokens_reads_are_open_and_management_is_off(open_api: ApiServer) -> None:
    read = call(open_api, *READ, None)
    manage = call(open_api, "POST", "/api/v1/runs", None)

    assert read.status_code == 200
    assert manage.status_code == 403 and "no API tokens" in manage.json()["error"]


def test_without_tokens_the_api_warns_at_start(sqlite_url: str, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING), serving(sqlite_url):
        pass

    assert any("no API tokens" in record.getMessage() for record in caplog.records)


def test_tokens_never_reach_the_logs(guarded: ApiServer, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.DEBUG):
        call(guarded, *READ, f"Bearer {VIEWER_TOKEN}")
        call(guarded, *MANAGE, f"Bearer {VIEWER_TOKEN}")
        call(guarded, *READ, "Bearer not-a-token-3e1f")
        with requests.get(f"{guarded.url}/api/v1/stream?token={ADMIN_TOKEN}", stream=True, timeout=10):
            pass

    # urllib3 is this test's own HTTP client (it logs the URL it requests); every other record is the server's
    server_side = [r for r in caplog.records if not r.name.startswith("urllib3")]
    text = "\n".join(f"{r.getMessage()} {r.args}" for r in server_side)
    assert "GET /api/v1/runs 200" in text  # the access log is on, so the absence below means something
    for secret in (VIEWER_TOKEN, ADMIN_TOKEN, "not-a-token-3e1f"):
        assert secret not in text


def test_fedbus_api_refuses_a_public_address_without_tokens(
    sqlite_url: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delenv("FEDBUS_API_TOKENS", raising=False)
    monkeypatch.delenv("FEDBUS_API_TOKENS_FILE", raising=False)

    status = main(["api", "--host", "0.0.0.0", "--port", "0", "--database-url", sqlite_url])

    err = capsys.readouterr().err
    assert status == 2
    assert err.count("\n") == 1 and "FEDBUS_API_TOKENS" in err


def test_tokens_come_from_a_file_with_roles(tmp_path: Path) -> None:
    path = tmp_path / "tokens"
    path.write_text("tok-viewer-1:viewer\ntok-admin-2:ADMIN\n")

    settings = ApiSettings.from_env({"FEDBUS_API_TOKENS_FILE": str(path)})

    assert dict(settings.tokens) == {"tok-viewer-1": Role.VIEWER, "tok-admin-2": Role.ADMIN}
    assert "tok-" not in repr(settings)


@pytest.mark.parametrize("text", ["justatoken", "t:superuser", ":admin"])
def test_a_malformed_token_list_is_a_config_error_that_hides_the_tokens(text: str) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_tokens(text)

    assert caught.value.field == "FEDBUS_API_TOKENS"
    assert "justatoken" not in str(caught.value)


def test_admin_allows_what_viewer_allows_but_not_the_reverse() -> None:
    assert Role.ADMIN.allows(Role.VIEWER) and Role.ADMIN.allows(Role.ADMIN)
    assert Role.VIEWER.allows(Role.VIEWER) and not Role.VIEWER.allows(Role.ADMIN)
