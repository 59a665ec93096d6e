"""Raw data never leaves a client: during a real DP round (coordinator + gRPC server + ClientWorkers with a
real trainer on 300 MNIST samples) everything the clients send is captured, and it holds only the declared
update and metrics, and not one training image, as uint8 pixels or as normalized float32 rows."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
import torch
import zstandard

from broker.in_memory_broker import InMemoryBroker
from contracts.capability import STEPS, TRAIN_S
from contracts.compression import decompress_update
from contracts.config import PrivacyConfig, RoundConfig, RunConfig
from contracts.envelope import Envelope
from contracts.events import ModelInitialized, RoundStarted, UpdateAccepted
from contracts.ports import Handler
from contracts.proto.fedbus.v1 import federation_pb2 as pb
from contracts.proto.fedbus.v1 import federation_pb2_grpc as pb_grpc
from contracts.tensor_codec import encode_with_manifest
from contracts.uploads import ClientCapabilities
from fedbus import Simulation
from ops.clock import SystemClock
from persistence.in_memory_event_log import InMemoryEventLog
from services.coordinator.coordinator import Coordinator
from services.coordinator.grpc_server import start_grpc_server
from services.coordinator.tokens import TokenAuthority
from tests.support.polling import eventually
from workers.client.trainer import PoolTrainer
from workers.client.transport import FederationClient
from workers.client.worker import ClientWorker
from workers.learning.datasets import load_dataset
from workers.learning.models import build_model, to_numpy

DATA_DIR = os.environ.get("FEDBUS_DATA_DIR", "/work/shared/datasets")
CLIENTS, SAMPLES = 2, 300
HEADER_FIELDS = {f.name for f in pb.UpdateHeader.DESCRIPTOR.fields}
# What the training loop measures, then what the client reports for capability-aware plans (its first upload has
# no uplink speed yet: contracts/capability.py).
DECLARED_METRICS = {"loss", "accuracy", "samples_per_second", "train_seconds", TRAIN_S, STEPS}


Sent = list[tuple[str, Any]]


def _method(details: Any) -> str:
    return details.method.decode() if isinstance(details.method, bytes) else str(details.method)


class _UnaryUnary(grpc.aio.UnaryUnaryClientInterceptor):  # type: ignore[misc]
    def __init__(self, sent: Sent) -> None:
        self.sent = sent

    async def intercept_unary_unary(self, continuation: Any, details: Any, request: Any) -> Any:
        self.sent.append((_method(details), request))
        return await continuation(details, request)


class _UnaryStream(grpc.aio.UnaryStreamClientInterceptor):  # type: ignore[misc]
    def __init__(self, sent: Sent) -> None:
        self.sent = sent

    async def intercept_unary_stream(self, continuation: Any, details: Any, request: Any) -> Any:
        self.sent.append((_method(details), request))
        return await continuation(details, request)


class _StreamUnary(grpc.aio.StreamUnaryClientInterceptor):  # type: ignore[misc]
    def __init__(self, sent: Sent) -> None:
        self.sent = sent

    async def intercept_stream_unary(self, continuation: Any, details: Any, requests: Any) -> Any:
        async def recorded() -> Any:
            async for request in requests:
                self.sent.append((_method(details), request))
                yield request

        return await continuation(details, recorded())


class RecordingFederationClient(FederationClient):
    """The real transport over a channel that records every request (and the bearer token it carries)."""

    def __init__(self, address: str) -> None:
        super().__init__(address, deadline_s=60, attempts=1)
        self.sent: Sent = []  # (method, request message) of every request, in order
        self._plain = self._channel
        self._channel = grpc.aio.insecure_channel(
            address,
            options=[("grpc.max_receive_message_length", 4 << 20), ("grpc.max_send_message_length", 4 << 20)],
            interceptors=[_UnaryUnary(self.sent), _UnaryStream(self.sent), _StreamUnary(self.sent)],
        )
        self._stub = pb_grpc.FederationStub(self._channel)  # type: ignore[no-untyped-call]

    async def close(self) -> None:
        await self._plain.close()
        await super().close()


class RecordingBroker:
    """What a client is wired to on the broker side: consuming is passed through, publishing is recorded."""

    def __init__(self, inner: InMemoryBroker) -> None:
        self._inner = inner
        self.published: list[bytes] = []

    async def ensure_client_queue(self, client_id: str) -> str:
        return await self._inner.ensure_client_queue(client_id)

    async def consume(self, queue: str, handler: Handler) -> object:
        return await self._inner.consume(queue, handler)

    async def publish(self, envelope: Envelope) -> None:
        self.published.append(repr(envelope).encode())
        await self._inner.publish(envelope)


def image_rows(indices: np.ndarray) -> tuple[list[bytes], list[bytes]]:
    """Each sample's 784 pixels as raw uint8 bytes and as the normalized float32 row the trainer sees."""
    train = load_dataset("mnist", train=True, data_dir=DATA_DIR)
    pixels = train.images[torch.as_tensor(indices)].reshape(len(indices), -1)
    normalized, _ = train.batch(indices)
    floats = normalized.reshape(len(indices), -1).numpy().astype(np.float32)
    return [row.numpy().tobytes() for row in pixels], [row.tobytes() for row in floats]


async def open_round(log: InMemoryEventLog, coordinator: Coordinator) -> tuple[str, RoundStarted, dict[str, Any]]:
    config = RunConfig(
        clients=CLIENTS,
        rounds=1,
        train_limit=SAMPLES,
        compression="int8",
        privacy=PrivacyConfig(enabled=True, epsilon=3.0),
        round=RoundConfig(quorum=1.0, timeout_s=600, batch_size=32),
    )
    run_id = await coordinator.create_run(config)
    weights = to_numpy(build_model(config.task, seed=config.seed))
    data, manifest = encode_with_manifest(weights)
    await log.put_blob(manifest.digest, "model", data)
    init = ModelInitialized(run_id=run_id, model_version=0, model_digest=manifest.digest, num_parameters=1)
    await log.append(f"run:{run_id}", [Envelope(event=init)])
    await coordinator.advance(run_id)
    started = next(
        r.envelope.event for r in await log.read_stream(f"run:{run_id}") if isinstance(r.envelope.event, RoundStarted)
    )
    return run_id, started, weights


async def accepted_of(log: InMemoryEventLog, run_id: str) -> list[UpdateAccepted]:
    return [
        r.envelope.event for r in await log.read_stream(f"run:{run_id}") if isinstance(r.envelope.event, UpdateAccepted)
    ]


def test_clients_send_only_the_declared_update_and_metrics_and_no_training_image() -> None:
    torch.set_num_threads(1)

    async def scenario() -> tuple[
        list[RecordingFederationClient], list[RecordingBroker], dict[str, Any], list[np.ndarray], str
    ]:
        log, tokens = InMemoryEventLog(), TokenAuthority.generate()
        coordinator = Coordinator(log)
        server, port = await start_grpc_server(coordinator, tokens, "127.0.0.1:0")
        broker = InMemoryBroker()
        transports, wirings, indices = [], [], []
        try:
            for index in range(CLIENTS):
                transport = RecordingFederationClient(f"127.0.0.1:{port}")
                transports.append(transport)
                registration = await transport.register(tokens.enrollment_token, ClientCapabilities(), f"c{index}")
                worker = ClientWorker(
                    transport,
                    PoolTrainer(None),
                    registration,
                    data_dir=DATA_DIR,
                    clock=SystemClock(),
                    share=(index, CLIENTS),
                )
                wiring = RecordingBroker(broker)
                wirings.append(wiring)
                await wiring.consume(await wiring.ensure_client_queue(registration.client_id), worker.handle)
                simulation = Simulation(
                    scheme="iid",
                    clients=CLIENTS,
                    index=index,
                    seed=0,
                    limit=SAMPLES,
                    dataset_dir=Path(DATA_DIR) if DATA_DIR else None,
                )
                labels = load_dataset("mnist", train=True, data_dir=DATA_DIR).labels.numpy()
                indices.append(simulation.indices(labels))
            run_id, started, weights = await open_round(log, coordinator)

            await broker.publish(Envelope(event=started))  # what the outbox relay does in a deployment

            await eventually(lambda: accepted_of(log, run_id), lambda a: len(a) == CLIENTS, within=120, interval=0.2)
            return transports, wirings, weights, indices, run_id
        finally:
            await broker.close()
            for transport in transports:
                await transport.close()
            await server.stop(grace=None)

    transports, wirings, weights, indices, run_id = asyncio.run(asyncio.wait_for(scenario(), 180))

    haystack: list[bytes] = []
    for transport, client_indices in zip(transports, indices, strict=True):
        sent = transport.sent
        methods = [method.rsplit("/", 1)[1] for method, _ in sent]
        assert set(methods) == {"Register", "DownloadModel", "UploadUpdate"}
        haystack += [request.SerializeToString() for _, request in sent] + [transport.token.encode()]
        chunks = [request for method, request in sent if method.endswith("UploadUpdate")]
        head = chunks[0].header
        assert {f.name for f, _ in head.ListFields()} <= HEADER_FIELDS
        assert not any(c.HasField("header") for c in chunks[1:])
        assert head.run_id == run_id and head.num_samples == len(client_indices)
        assert head.HasField("epsilon") and head.epsilon > 0
        assert set(head.metrics) == DECLARED_METRICS, head.metrics  # a few scalars, nothing per sample
        payload = b"".join(c.data for c in chunks)
        haystack.append(zstandard.ZstdDecompressor().decompress(payload))  # search inside the compression too
        update = decompress_update(payload)
        assert sorted(update) == sorted(weights)
        assert {k: v.shape for k, v in update.items()} == {k: v.shape for k, v in weights.items()}
    assert [w.published for w in wirings] == [[] for _ in wirings]

    everything = b"\x00".join(haystack)
    stored = load_dataset("mnist", train=True, data_dir=DATA_DIR).images.numpy().tobytes()
    for client_indices in indices:
        pixels, floats = image_rows(client_indices)
        assert len(pixels) == len(client_indices) and all(len(row) == 784 for row in pixels)
        assert all(row in stored for row in pixels[:5])  # the search finds rows where they are
        assert not [i for i, row in enumerate(pixels) if row in everything]
        assert not [i for i, row in enumerate(floats) if row in everything]
    assert sum(len(i) for i in indices) == SAMPLES


pytestmark = pytest.mark.skipif(
    not os.path.exists(os.path.join(DATA_DIR, "MNIST", "raw", "train-images-idx3-ubyte")), reason="MNIST not available"
)
