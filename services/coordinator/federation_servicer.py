"""The gRPC edge: parse, call one coordinator function, encode; errors through one status table."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass

import grpc

from contracts.errors import CodecError
from contracts.ports import Clock
from contracts.proto.fedbus.v1 import federation_pb2 as pb
from contracts.proto.fedbus.v1 import federation_pb2_grpc as pb_grpc
from contracts.tensor_codec import Manifest, iter_chunks
from contracts.uploads import ClientCapabilities, UploadHeader, check_count, check_text
from contracts.wire import CHUNK_SIZE, RETRY_AFTER_KEY
from ops.clock import SystemClock
from services.coordinator.blob_cache import Recent
from services.coordinator.coordinator import Coordinator
from services.coordinator.errors import UploadStalled
from services.coordinator.grpc_status import status_of
from services.coordinator.grpc_wire import Malformed, parsed
from services.coordinator.tokens import PermissionDenied, TokenAuthority, Unauthenticated

RETRY_AFTER_MS = 200
DRAIN_BYTES = 4 << 20  # what a refused upload may still send before the refusal goes out
DRAIN_SECONDS = 2.0


def bearer(context: grpc.aio.ServicerContext[object, object]) -> str:
    for key, value in context.invocation_metadata() or ():
        if key == "authorization" and isinstance(value, str) and value.startswith("Bearer "):
            return value[len("Bearer ") :]
    raise Unauthenticated("missing 'authorization: Bearer <token>' metadata")


MODEL_FRAMES_KEPT = 2  # model versions whose serialized download is kept (the open round's, and the last one's)


def _model_chunks(manifest: Manifest, data: bytes, chunk_size: int, offset: int) -> Iterator[pb.ModelChunk]:
    """A model's download from `offset` on: the first message carries the manifest (one empty chunk past the end)."""
    specs = [pb.TensorSpec(name=s.name, dtype=s.dtype, shape=list(s.shape)) for s in manifest.tensors]
    header: pb.Manifest | None = pb.Manifest(digest=manifest.digest, size=manifest.size, tensors=specs)
    for chunk in iter_chunks(data, chunk_size, offset=offset) if offset < len(data) else [b""]:
        yield pb.ModelChunk(manifest=header, data=chunk)
        header = None


@dataclass(frozen=True, slots=True, kw_only=True)
class UploadLimits:
    """How many upload streams may be open, and how long one may hold its slot."""

    max_concurrent: int = 64  # streams in flight; past it new ones are shed with RESOURCE_EXHAUSTED
    idle_s: float = 15.0  # the longest wait for a stream's next chunk
    max_s: float = 600.0  # the longest a stream may take from its first byte to its last


class FederationServicer(pb_grpc.FederationServicer):
    def __init__(
        self,
        coordinator: Coordinator,
        tokens: TokenAuthority,
        *,
        chunk_size: int = CHUNK_SIZE,
        clock: Clock | None = None,
        uploads: UploadLimits | None = None,
    ) -> None:
        self._coordinator = coordinator
        self._limits = uploads or UploadLimits()
        self._uploading: set[str] = set()  # client ids with a stream in flight; one event loop, no lock needed
        self._clock = clock or SystemClock()
        self._tokens = tokens
        self._chunk_size = chunk_size
        self._frames: Recent[str, list[bytes]] = Recent(MODEL_FRAMES_KEPT)  # model digest -> serialized chunks

    def _client_id(self, context: grpc.aio.ServicerContext[object, object]) -> str:
        return self._tokens.verify(bearer(context), now=self._clock.now())

    async def Register(
        self, request: pb.RegisterRequest | Malformed, context: grpc.aio.ServicerContext[object, object]
    ) -> pb.RegisterReply:
        try:
            self._tokens.check_enrollment(bearer(context))
            ask: pb.RegisterRequest = parsed(request)
            caps = ask.capabilities
            capabilities = ClientCapabilities(
                device=caps.device,
                cores=caps.cores,
                memory_bytes=caps.memory_bytes,
                hostname=caps.hostname,
                own_data=caps.own_data,
            )
            instance_name = _certified_name(context, ask.instance_name)
            enrolment = await self._coordinator.clients.register(capabilities, instance_name, ask.client_secret)
        except Exception as exc:
            await context.abort(*status_of(exc))
        record = enrolment.record
        return pb.RegisterReply(
            client_id=record.client_id,
            client_token=self._tokens.issue(record.client_id, now=self._clock.now()),
            client_secret=enrolment.secret,
        )

    async def DownloadModel(
        self, request: pb.DownloadRequest | Malformed, context: grpc.aio.ServicerContext[object, object]
    ) -> AsyncIterator[bytes]:
        """The model, as serialized ModelChunk messages (grpc_wire sends bytes as they are)."""
        try:
            self._client_id(context)
            ask: pb.DownloadRequest = parsed(request)
            check_text("run_id", ask.run_id, required=True)
            check_count("model_version", ask.model_version, 0)
            check_count("offset", ask.offset, 0, 1 << 40)
            check_count("round", ask.round, 0)
            manifest, data = await self._coordinator.models.model(ask.run_id, ask.model_version, ask.round)
        except Exception as exc:
            await context.abort(*status_of(exc))
        if ask.offset == 0:
            for frame in self._whole_model_frames(manifest, data):
                yield frame
        else:
            for message in _model_chunks(manifest, data, self._chunk_size, ask.offset):
                yield message.SerializeToString()

    def _whole_model_frames(self, manifest: Manifest, data: bytes) -> list[bytes]:
        """A whole model's download as serialized ModelChunk messages, built once per model version and kept for
        the latest MODEL_FRAMES_KEPT: every client downloads the same frames each round, and protobuf's copy and
        serialization of each chunk, per client, was several ms of the coordinator's CPU (a 6.8 MB model in 1 MiB
        chunks: 7.6 ms, measured with other work running). A download resumed at an offset is serialized as it goes."""
        return self._frames.get(
            manifest.digest,
            lambda: [m.SerializeToString() for m in _model_chunks(manifest, data, self._chunk_size, 0)],
        )

    async def UploadUpdate(
        self,
        request_iterator: AsyncIterator[pb.UpdateChunk | Malformed],
        context: grpc.aio.ServicerContext[object, object],
    ) -> pb.UploadReply:
        try:
            # Who is asking comes first: a stream without a valid token never holds a slot.
            client_id = self._client_id(context)
        except Exception as exc:
            await _drain(request_iterator)
            await context.abort(*status_of(exc))
        await self._admit_stream(client_id, request_iterator, context)
        self._uploading.add(client_id)
        chunks = _paced(request_iterator, self._limits)
        try:
            first = await anext(chunks, None)
            if first is None or not first.HasField("header"):
                raise CodecError("bad_header: the first chunk must carry the header")
            header = _header(first.header)
            if header.client_id != client_id:
                raise PermissionDenied(f"token of {client_id} cannot upload as {header.client_id}")
            accepted = await self._coordinator.uploads.receive(client_id, header, first.data, _data(chunks))
        except Exception as exc:
            await _drain(request_iterator)  # the stream itself: `chunks` ends with its first error
            await context.abort(*status_of(exc))
        finally:
            self._uploading.discard(client_id)
        return pb.UploadReply(update_id=accepted.update_id, accepted=True, late=accepted.late)

    async def _admit_stream(
        self,
        client_id: str,
        request_iterator: AsyncIterator[pb.UpdateChunk | Malformed],
        context: grpc.aio.ServicerContext[object, object],
    ) -> None:
        """Shed the stream without taking a slot when the client already has one open or every slot is taken;
        the client backs off and retries (see RETRY_AFTER_KEY). What it is still sending is drained first, as
        for every refusal: a shed 3 MiB upload otherwise reached the client as INTERNAL about one time in ten."""
        if client_id in self._uploading:
            why = f"{client_id} already has an upload in flight"
        elif len(self._uploading) >= self._limits.max_concurrent:
            why = f"overloaded: {len(self._uploading)} uploads in flight"
        else:
            return
        self._coordinator.metrics.uploads_shed.inc()
        await _drain(request_iterator)
        await context.abort(
            grpc.StatusCode.RESOURCE_EXHAUSTED,
            f"{why}; retry later",
            trailing_metadata=((RETRY_AFTER_KEY, str(RETRY_AFTER_MS)),),
        )

    async def Decline(
        self, request: pb.DeclineRequest | Malformed, context: grpc.aio.ServicerContext[object, object]
    ) -> pb.DeclineReply:
        try:
            client_id = self._client_id(context)
            ask: pb.DeclineRequest = parsed(request)
            check_text("run_id", ask.run_id, required=True)
            check_count("round", ask.round, 1)
            check_text("reason", ask.reason)
            await self._coordinator.decline(client_id, ask.run_id, ask.round, ask.reason)
        except Exception as exc:
            await context.abort(*status_of(exc))
        return pb.DeclineReply()


async def _paced(
    chunks: AsyncIterator[pb.UpdateChunk | Malformed], limits: UploadLimits
) -> AsyncIterator[pb.UpdateChunk]:
    """The stream's chunks, parsed, each within `idle_s` of the last and all within `max_s`: a stream that
    stalls or trickles gives its slot back (UploadStalled) instead of holding it while it lives."""
    stream = aiter(chunks)
    started = time.monotonic()
    while True:
        wait = min(limits.idle_s, limits.max_s - (time.monotonic() - started))
        try:
            async with asyncio.timeout(max(0.0, wait)):
                chunk = await anext(stream)
        except StopAsyncIteration:
            return
        except TimeoutError:
            if wait < limits.idle_s:
                raise UploadStalled(f"the upload took longer than {limits.max_s:g} s") from None
            raise UploadStalled(f"no chunk for {limits.idle_s:g} s") from None
        yield parsed(chunk)


async def _data(chunks: AsyncIterator[pb.UpdateChunk]) -> AsyncIterator[bytes]:
    async for chunk in chunks:
        if chunk.HasField("header"):
            raise CodecError("only the first chunk may carry a header")
        yield chunk.data


async def _drain(chunks: AsyncIterator[pb.UpdateChunk | Malformed]) -> None:
    """Read (and drop) what the client is still sending, up to a bound, before refusing its upload.

    grpc.aio clients can see INTERNAL "Internal error from Core" instead of the server's status when the
    server ends a client stream while the client is still writing (grpc/grpc#36066); a small upload drained
    to its end gets its real status. Past the bound the refusal goes out anyway (the client may then see
    INTERNAL and retries it, see workers/client/transport.py).
    """
    seen = 0
    with contextlib.suppress(
        TimeoutError, grpc.aio.AioRpcError, grpc.aio.AbortError, StopAsyncIteration, CodecError, UploadStalled
    ):
        async with asyncio.timeout(DRAIN_SECONDS):
            async for chunk in chunks:
                seen += len(chunk.data) if isinstance(chunk, pb.UpdateChunk) else 1
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


def _certified_name(context: grpc.aio.ServicerContext[object, object], asked: str) -> str:
    """The instance name a registration gets: under mTLS the client certificate's subject (its CN) is the
    identity, so a caller asking for another name is refused; without mTLS, the name it asked for."""
    names = context.auth_context().get("x509_common_name") or []
    if not names:
        return asked
    certified = bytes(names[0]).decode("utf-8", "replace")
    if asked and asked != certified:
        raise PermissionDenied(
            f"instance name {asked!r:.100} is not the client certificate's subject {certified!r:.100}"
        )
    return certified
