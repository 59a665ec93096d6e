"""Transport security and identity at the gRPC edge: TLS, mTLS, expiring signed tokens, load shedding."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest

from contracts.uploads import ClientCapabilities
from ops.settings import Settings
from ops.tls import ClientTls, ServerTls
from persistence.in_memory_event_log import InMemoryEventLog
from services.coordinator.coordinator import Coordinator
from services.coordinator.grpc_server import start_grpc_server
from services.coordinator.tokens import TokenAuthority, Unauthenticated
from tests.support.certificates import Pki, make_pki
from workers.client.transport import FederationClient


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"))


@contextlib.asynccontextmanager
async def serving(tls: ServerTls | None) -> AsyncIterator[tuple[str, TokenAuthority]]:
    tokens = TokenAuthority.generate()
    server, port = await start_grpc_server(Coordinator(InMemoryEventLog()), tokens, "127.0.0.1:0", tls=tls)
    try:
        yield f"localhost:{port}", tokens
    finally:
        await server.stop(grace=None)


async def register(address: str, tokens: TokenAuthority, tls: ClientTls | None) -> str:
    client = FederationClient(address, deadline_s=5, attempts=1, tls=tls)
    try:
        return (await client.register(tokens.enrollment_token, ClientCapabilities())).client_id
    finally:
        await client.close()


def test_tls_serves_tls_clients_and_refuses_plaintext(pki: Pki) -> None:
    async def scenario() -> None:
        async with serving(ServerTls(cert=str(pki.server_cert), key=str(pki.server_key))) as (address, tokens):
            assert await register(address, tokens, ClientTls(ca=str(pki.ca)))
            with pytest.raises(grpc.aio.AioRpcError) as plaintext:
                await register(address, tokens, None)
            assert plaintext.value.code() == grpc.StatusCode.UNAVAILABLE

    asyncio.run(scenario())


def test_mtls_requires_a_client_certificate_from_the_trusted_ca(pki: Pki, tmp_path: Path) -> None:
    stranger = make_pki(tmp_path / "other", name="stranger-ca")
    server_tls = ServerTls(cert=str(pki.server_cert), key=str(pki.server_key), client_ca=str(pki.ca))

    async def scenario() -> None:
        async with serving(server_tls) as (address, tokens):
            trusted = ClientTls(ca=str(pki.ca), cert=str(pki.client_cert), key=str(pki.client_key))
            assert await register(address, tokens, trusted)
            for tls in (
                ClientTls(ca=str(pki.ca)),
                ClientTls(ca=str(pki.ca), cert=str(stranger.client_cert), key=str(stranger.client_key)),
            ):
                with pytest.raises(grpc.aio.AioRpcError) as refused:
                    await register(address, tokens, tls)
                assert refused.value.code() == grpc.StatusCode.UNAVAILABLE

    asyncio.run(scenario())


def test_client_tokens_are_signed_and_expire() -> None:
    authority = TokenAuthority.generate()
    other = TokenAuthority.generate()
    token = authority.issue("c-1", now=1000.0)

    assert authority.verify(token, now=1000.0 + authority.ttl_s - 1) == "c-1"
    with pytest.raises(Unauthenticated, match="expired"):
        authority.verify(token, now=1000.0 + authority.ttl_s + 1)
    with pytest.raises(Unauthenticated, match="invalid"):
        other.verify(token, now=1000.0)
    with pytest.raises(Unauthenticated, match="invalid"):
        authority.verify(token.replace("c-1", "c-2", 1), now=1000.0)


def test_wrong_enrollment_token_is_unauthenticated() -> None:
    async def scenario() -> None:
        async with serving(None) as (address, _tokens):
            client = FederationClient(address, deadline_s=5, attempts=1)
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await client.register("not-the-token", ClientCapabilities())
            await client.close()
            assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED

    asyncio.run(scenario())


def test_secrets_come_from_files_and_never_show_in_settings_repr(tmp_path: Path) -> None:
    secret_file = tmp_path / "secret"
    secret_file.write_text("s3cr3t-signing-key\n")

    settings = Settings.from_env({"FEDBUS_TOKEN_SECRET_FILE": str(secret_file), "FEDBUS_ENROLLMENT_TOKEN": "enrol-me"})

    assert settings.token_secret == "s3cr3t-signing-key"
    assert "s3cr3t" not in repr(settings) and "enrol-me" not in repr(settings)


def test_under_mtls_the_certificates_subject_is_the_instance_name_and_no_other_name_is_granted(pki: Pki) -> None:
    """A site's certificate (CN) is its identity: it cannot register under another site's name, and a
    registration that names nothing gets the certificate's name."""
    server_tls = ServerTls(cert=str(pki.server_cert), key=str(pki.server_key), client_ca=str(pki.ca))
    tls = ClientTls(ca=str(pki.ca), cert=str(pki.client_cert), key=str(pki.client_key))
    certified = "fedbus-test-ca-client"  # make_pki's client CN

    async def scenario() -> None:
        tokens = TokenAuthority.generate()
        log = InMemoryEventLog()
        server, port = await start_grpc_server(Coordinator(log), tokens, "127.0.0.1:0", tls=server_tls)
        client = FederationClient(f"localhost:{port}", deadline_s=5, attempts=1, tls=tls)
        try:
            with pytest.raises(grpc.aio.AioRpcError) as other:
                await client.register(tokens.enrollment_token, ClientCapabilities(), "another-site")
            assert other.value.code() == grpc.StatusCode.PERMISSION_DENIED
            assert "client certificate's subject" in (other.value.details() or "")
            first = await client.register(tokens.enrollment_token, ClientCapabilities(), "")
            again = await client.register(tokens.enrollment_token, ClientCapabilities(), certified, first.secret)
            assert again.client_id == first.client_id
        finally:
            await client.close()
            await server.stop(grace=None)
        names = [r.envelope.event.capabilities["instance_name"] for r in await log.read_all()]
        assert names == [certified]

    asyncio.run(scenario())
