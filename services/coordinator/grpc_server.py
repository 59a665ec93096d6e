"""Start the grpc.aio server that serves the federation service."""

from __future__ import annotations

import grpc

from contracts.proto.fedbus.v1 import federation_pb2_grpc as pb_grpc
from contracts.wire import MAX_MESSAGE_BYTES
from ops.tls import ServerTls
from services.coordinator.coordinator import Coordinator
from services.coordinator.federation_servicer import FederationServicer
from services.coordinator.tokens import TokenAuthority


async def start_grpc_server(
    coordinator: Coordinator,
    tokens: TokenAuthority,
    address: str,
    *,
    tls: ServerTls | None = None,
    max_concurrent_uploads: int = 64,
) -> tuple[grpc.aio.Server, int]:
    """Bind `address` (host:port, port 0 picks one) and start serving; returns the server and its port.

    With `tls`, only TLS connections are accepted (a plaintext client fails its handshake); with a client CA
    in `tls`, only mTLS. Past `max_concurrent_uploads` uploads in flight, new ones are shed with
    RESOURCE_EXHAUSTED and a retry-after hint instead of queueing without bound.
    """
    server = grpc.aio.server(
        options=[
            ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
            ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
        ]
    )
    servicer = FederationServicer(coordinator, tokens, max_concurrent_uploads=max_concurrent_uploads)
    pb_grpc.add_FederationServicer_to_server(servicer, server)  # type: ignore[no-untyped-call]
    port = server.add_secure_port(address, tls.credentials()) if tls else server.add_insecure_port(address)
    await server.start()
    return server, port
