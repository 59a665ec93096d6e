"""Start the grpc.aio server that serves the federation service."""

from __future__ import annotations

import grpc

from contracts.wire import MAX_MESSAGE_BYTES, MIN_CLIENT_PING_MS
from ops.tls import ServerTls
from services.coordinator.coordinator import Coordinator
from services.coordinator.federation_servicer import FederationServicer, UploadLimits
from services.coordinator.grpc_wire import add_federation_service
from services.coordinator.tokens import TokenAuthority


async def start_grpc_server(
    coordinator: Coordinator,
    tokens: TokenAuthority,
    address: str,
    *,
    tls: ServerTls | None = None,
    uploads: UploadLimits | None = None,
) -> tuple[grpc.aio.Server, int]:
    """Bind `address` (host:port, port 0 picks one) and start serving; returns the server and its port.

    With `tls`, only TLS connections are accepted (a plaintext client fails its handshake); with a client CA
    in `tls`, only mTLS. Past `uploads.max_concurrent` uploads in flight (or a second one from one client), new
    ones are shed with RESOURCE_EXHAUSTED and a retry-after hint instead of queueing without bound; a stream
    idle or slow past `uploads` deadlines loses its slot.
    """
    server = grpc.aio.server(
        options=[
            ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
            ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
            ("grpc.http2.min_recv_ping_interval_without_data_ms", MIN_CLIENT_PING_MS),
            ("grpc.keepalive_permit_without_calls", 0),
        ]
    )
    add_federation_service(FederationServicer(coordinator, tokens, uploads=uploads), server)
    port = server.add_secure_port(address, tls.credentials()) if tls else server.add_insecure_port(address)
    await server.start()
    return server, port
