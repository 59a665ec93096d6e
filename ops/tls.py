"""gRPC transport security from settings: TLS, or mTLS when a client CA is configured.

Paths come from the environment (FEDBUS_TLS_*); the key material is read from files, never logged.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import grpc

from contracts.errors import ConfigError


def _read(name: str, path: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise ConfigError(name, f"cannot read {path}: {exc.strerror}") from exc


@dataclass(frozen=True, slots=True, kw_only=True)
class ServerTls:
    cert: str
    key: str
    client_ca: str | None = None  # set: every client must present a certificate signed by it (mTLS)

    def credentials(self) -> grpc.ServerCredentials:
        pair = [(_read("FEDBUS_TLS_KEY", self.key), _read("FEDBUS_TLS_CERT", self.cert))]
        if self.client_ca is None:
            return grpc.ssl_server_credentials(pair)
        return grpc.ssl_server_credentials(
            pair, root_certificates=_read("FEDBUS_TLS_CLIENT_CA", self.client_ca), require_client_auth=True
        )


@dataclass(frozen=True, slots=True, kw_only=True)
class ClientTls:
    ca: str
    cert: str | None = None  # with `key`: this client's certificate for mTLS
    key: str | None = None
    server_name: str | None = None  # override the name checked against the server certificate

    def credentials(self) -> grpc.ChannelCredentials:
        return grpc.ssl_channel_credentials(
            root_certificates=_read("FEDBUS_TLS_CA", self.ca),
            private_key=_read("FEDBUS_TLS_CLIENT_KEY", self.key) if self.key else None,
            certificate_chain=_read("FEDBUS_TLS_CLIENT_CERT", self.cert) if self.cert else None,
        )
