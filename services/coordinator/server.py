"""Start the grpc.aio server that serves the federation service."""

from __future__ import annotations

import grpc

from contracts.proto.fedbus.v1 import federation_pb2_grpc as pb_grpc
from services.coordinator.service import Coordinator
from services.coordinator.servicer import FederationServicer
from services.coordinator.tokens import TokenAuthority

# Chunks are 1 MiB; leave room for the header and protobuf framing.
MAX_MESSAGE_BYTES = 4 << 20


async def start_grpc_server(
    coordinator: Coordinator, tokens: TokenAuthority, address: str
) -> tuple[grpc.aio.Server, int]:
    """Bind `address` (host:port, port 0 picks one) and start serving; returns the server and its port."""
    server = grpc.aio.server(
        options=[
            ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
            ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
        ]
    )
    pb_grpc.add_FederationServicer_to_server(FederationServicer(coordinator, tokens), server)  # type: ignore[no-untyped-call]
    port = server.add_insecure_port(address)
    await server.start()
    return server, port
