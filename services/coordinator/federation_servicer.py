"""The gRPC edge: parse, call one coordinator function, encode; errors through one status table."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import grpc

from contracts.errors import CodecError
from contracts.ports import Clock
from contracts.proto.fedbus.v1 import federation_pb2 as pb
from contracts.proto.fedbus.v1 import federation_pb2_grpc as pb_grpc
from contracts.tensor_codec import iter_chunks
from contracts.uploads import ClientCapabilities, UploadHeader
from contracts.wire import CHUNK_SIZE, RETRY_AFTER_KEY
from ops.clock import SystemClock
from services.coordinator.coordinator import Coordinator
from services.coordinator.grpc_status import status_of
from services.coordinator.tokens import PermissionDenied, TokenAuthority, Unauthenticated

RETRY_AFTER_MS = 200
DRAIN_BYTES = 4 << 20  # what a refused upload may still send before the refusal goes out
DRAIN_SECONDS = 2.0


def bearer(context: grpc.aio.ServicerContext[object, object]) -> str:
    for key, value in context.invocation_metadata() or ():
        if key == "authorization" and isinstance(value, str) and value.startswith("Bearer "):
            return value[len("Bearer ") :]
    raise Unauthenticated("missing 'authorization: Bearer <token>' metadata")


class FederationServicer(pb_grpc.FederationServicer):
    def __init__(
        self,
        coordinator: Coordinator,
        tokens: TokenAuthority,
        *,
        chunk_size: int = CHUNK_SIZE,
        clock: Clock | None = None,
        max_concurrent_uploads: int = 64,
    ) -> None:
        self._coordinator = coordinator
        self._max_uploads = max_concurrent_uploads
        self._uploads = 0  # in flight; one event loop, so a plain counter is enough
        self._clock = clock or SystemClock()
        self._tokens = tokens
        self._chunk_size = chunk_size

    def _client_id(self, context: grpc.aio.ServicerContext[object, object]) -> str:
        return self._tokens.verify(bearer(context), now=self._clock.now())

    async def Register(
        self, request: pb.RegisterRequest, context: grpc.aio.ServicerContext[object, object]
    ) -> pb.RegisterReply:
        try:
            self._tokens.check_enrollment(bearer(context))
            caps = request.capabilities
            record = await self._coordinator.clients.register(
                ClientCapabilities(
                    device=caps.device, cores=caps.cores, memory_bytes=caps.memory_bytes, hostname=caps.hostname
                ),
                request.instance_name,
            )
        except Exception as exc:
            await context.abort(*status_of(exc))
        return pb.RegisterReply(
            client_id=record.client_id,
            client_token=self._tokens.issue(record.client_id, now=self._clock.now()),
            partition_index=record.partition_index,
            partition_count=self._coordinator.clients.partition_count,
        )

    async def DownloadModel(
        self, request: pb.DownloadRequest, context: grpc.aio.ServicerContext[object, object]
    ) -> AsyncIterator[pb.ModelChunk]:
        try:
            self._client_id(context)
            if request.offset < 0:
                raise CodecError("offset must be >= 0")
            manifest, data = await self._coordinator.models.model(request.run_id, request.model_version)
        except Exception as exc:
            await context.abort(*status_of(exc))
        specs = [pb.TensorSpec(name=s.name, dtype=s.dtype, shape=list(s.shape)) for s in manifest.tensors]
        first = True
        chunks = iter_chunks(data, self._chunk_size, offset=request.offset) if request.offset < len(data) else [b""]
        for chunk in chunks:
            header = pb.Manifest(digest=manifest.digest, size=manifest.size, tensors=specs) if first else None
            yield pb.ModelChunk(manifest=header, data=chunk)
            first = False

    async def UploadUpdate(
        self, request_iterator: AsyncIterator[pb.UpdateChunk], context: grpc.aio.ServicerContext[object, object]
    ) -> pb.UploadReply:
        if self._uploads >= self._max_uploads:
            self._coordinator.metrics.uploads_shed.inc()
            # Shed load before reading a byte: the client backs off and retries (see RETRY_AFTER_KEY).
            await context.abort(
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                f"overloaded: {self._uploads} uploads in flight; retry later",
                trailing_metadata=((RETRY_AFTER_KEY, str(RETRY_AFTER_MS)),),
            )
        self._uploads += 1
        try:
            client_id = self._client_id(context)
            first: pb.UpdateChunk | None = await anext(aiter(request_iterator), None)
            if first is None or not first.HasField("header"):
                raise CodecError("bad_header: the first chunk must carry the header")
            header = _header(first.header)
            if header.client_id != client_id:
                raise PermissionDenied(f"token of {client_id} cannot upload as {header.client_id}")
            accepted = await self._coordinator.uploads.receive(client_id, header, first.data, _data(request_iterator))
        except Exception as exc:
            await _drain(request_iterator)
            await context.abort(*status_of(exc))
        finally:
            self._uploads -= 1
        return pb.UploadReply(update_id=accepted.update_id, accepted=True, late=accepted.late)

    async def Decline(
        self, request: pb.DeclineRequest, context: grpc.aio.ServicerContext[object, object]
    ) -> pb.DeclineReply:
        try:
            client_id = self._client_id(context)
            await self._coordinator.decline(client_id, request.run_id, request.round, request.reason)
        except Exception as exc:
            await context.abort(*status_of(exc))
        return pb.DeclineReply()


async def _data(chunks: AsyncIterator[pb.UpdateChunk]) -> AsyncIterator[bytes]:
    async for chunk in chunks:
        if chunk.HasField("header"):
            raise CodecError("only the first chunk may carry a header")
        yield chunk.data


async def _drain(chunks: AsyncIterator[pb.UpdateChunk]) -> None:
    """Read (and drop) what the client is still sending, up to a bound, before refusing its upload.

    grpc.aio clients can see INTERNAL "Internal error from Core" instead of the server's status when the
    server ends a client stream while the client is still writing (grpc/grpc#36066); a small upload drained
    to its end gets its real status. Past the bound the refusal goes out anyway (the client may then see
    INTERNAL and retries it, see workers/client/transport.py).
    """
    seen = 0
    with contextlib.suppress(TimeoutError, grpc.aio.AioRpcError, grpc.aio.AbortError, StopAsyncIteration):
        async with asyncio.timeout(DRAIN_SECONDS):
            async for chunk in chunks:
                seen += len(chunk.data)
                if seen > DRAIN_BYTES:
                    return


def _header(h: pb.UpdateHeader) -> UploadHeader:
    try:
        return UploadHeader(
            run_id=h.run_id,
            round=h.round,
            client_id=h.client_id,
            base_model_version=h.base_model_version,
            num_samples=h.num_samples,
            codec=h.codec,
            total_size=h.total_size,
            sha256=h.sha256,
            raw_bytes=h.raw_bytes,
            epsilon=h.epsilon if h.HasField("epsilon") else None,
            metrics=dict(h.metrics),
        )
    except ValueError as exc:
        raise CodecError(f"bad_header: {exc}") from exc
