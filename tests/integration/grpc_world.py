"""A coordinator with a real gRPC server on loopback and an open round, for edge tests (no torch)."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass

import grpc
import numpy as np

from contracts.compression import compress_update, parse_compression
from contracts.config import PrivacyConfig, RoundConfig, RunConfig
from contracts.envelope import Envelope
from contracts.events import ModelInitialized, RoundStarted
from contracts.ports import EventLog
from contracts.tensor_codec import encode_with_manifest, sha256_hex
from contracts.tensors import TensorDict
from contracts.uploads import ClientCapabilities, UploadHeader
from persistence.in_memory_event_log import InMemoryEventLog
from services.coordinator.coordinator import Coordinator
from services.coordinator.federation_servicer import UploadLimits
from services.coordinator.grpc_server import start_grpc_server
from services.coordinator.tokens import TokenAuthority
from workers.client.transport import FederationClient, Registration


@dataclass
class World:
    log: EventLog
    coordinator: Coordinator
    tokens: TokenAuthority
    address: str
    run_id: str
    model: TensorDict
    round: RoundStarted
    clients: list[tuple[FederationClient, Registration]]

    def header_for(self, registration: Registration, payload: bytes, **overrides: object) -> UploadHeader:
        fields: dict[str, object] = {
            "run_id": self.run_id,
            "round": self.round.round,
            "client_id": registration.client_id,
            "base_model_version": self.round.model_version,
            "num_samples": 100,
            "codec": "fp32",
            "total_size": len(payload),
            "sha256": sha256_hex(payload),
            "raw_bytes": len(payload),
            "metrics": {"loss": 0.5},
        }
        fields.update(overrides)
        return UploadHeader(**fields)  # type: ignore[arg-type]

    async def events_of(self, cls: type) -> list[object]:
        return [
            r.envelope.event
            for r in await self.log.read_stream(f"run:{self.run_id}")
            if isinstance(r.envelope.event, cls)
        ]


def small_model(seed: int = 0, *, big: bool = False) -> TensorDict:
    rng = np.random.default_rng(seed)
    weight_shape = (1200, 1200) if big else (8, 4)  # big: 5.5 MiB of float32, beyond gRPC's 4 MiB message cap
    return {
        "conv.weight": rng.standard_normal(weight_shape).astype(np.float32),
        "conv.bias": rng.standard_normal(4).astype(np.float32),
    }


def update_payload(model: TensorDict, *, scale: float = 0.01, codec: str = "fp32", seed: int = 1) -> bytes:
    rng = np.random.default_rng(seed)
    delta = {k: (rng.standard_normal(v.shape) * scale).astype(np.float32) for k, v in model.items()}
    return compress_update(delta, parse_compression(codec)).payload


@contextlib.asynccontextmanager
async def world(
    *,
    clients: int = 3,
    big: bool = False,
    quorum: float = 1.0,
    max_concurrent_uploads: int = 64,
    uploads: UploadLimits | None = None,
    attempts: int = 1,
    log: EventLog | None = None,
) -> AsyncIterator[World]:
    log = log or InMemoryEventLog()
    coordinator = Coordinator(log)
    tokens = TokenAuthority.generate()
    server, port = await start_grpc_server(
        coordinator, tokens, "127.0.0.1:0", uploads=uploads or UploadLimits(max_concurrent=max_concurrent_uploads)
    )
    address = f"127.0.0.1:{port}"
    registered: list[tuple[FederationClient, Registration]] = []
    try:
        for index in range(clients):
            transport = FederationClient(address, deadline_s=60, attempts=attempts)
            registration = await transport.register(tokens.enrollment_token, ClientCapabilities(), f"test-{index}")
            registered.append((transport, registration))
        config = RunConfig(
            clients=clients,
            rounds=3,
            privacy=PrivacyConfig(enabled=False),
            round=RoundConfig(quorum=quorum, timeout_s=60, max_update_norm=1e6),
        )
        run_id = await coordinator.create_run(config)
        model = small_model(big=big)
        data, manifest = encode_with_manifest(model)
        await log.put_blob(manifest.digest, "model", data)
        init = ModelInitialized(run_id=run_id, model_version=0, model_digest=manifest.digest, num_parameters=1)
        await log.append(f"run:{run_id}", [Envelope(event=init)])
        await coordinator.advance(run_id)
        started = [r.envelope.event for r in await log.read_stream(f"run:{run_id}")]
        round_ = next(e for e in started if isinstance(e, RoundStarted))
        yield World(log, coordinator, tokens, address, run_id, model, round_, registered)
    finally:
        for transport, _ in registered:
            await transport.close()
        await server.stop(grace=None)


def code_of(error: BaseException) -> grpc.StatusCode:
    assert isinstance(error, grpc.aio.AioRpcError), error
    return error.code()
