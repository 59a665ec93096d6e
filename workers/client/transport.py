"""The client's side of the gRPC contract: deadlines on every call, retries on UNAVAILABLE only."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import TypeVar

import grpc
from tenacity import AsyncRetrying, retry_if_exception, stop_after_attempt, wait_exponential_jitter

from contracts.errors import DigestMismatch, FedbusError
from contracts.proto.fedbus.v1 import federation_pb2 as pb
from contracts.proto.fedbus.v1 import federation_pb2_grpc as pb_grpc
from contracts.tensor_codec import ChunkAssembler, iter_chunks
from contracts.uploads import ClientCapabilities, UploadHeader
from contracts.wire import CHUNK_SIZE, KEEPALIVE_MS, KEEPALIVE_TIMEOUT_MS, MAX_MESSAGE_BYTES, RETRY_AFTER_KEY
from ops.tls import ClientTls

T = TypeVar("T")
MAX_MODEL_BYTES = 2 << 30


MASKED_ABORT = "Internal error from Core"
# What gRPC says when one side speaks TLS and the other does not: a TLS server closes a plaintext
# connection ("Socket closed"), a TLS client fails its handshake with a plaintext server.
TLS_MISMATCH_MARKERS = ("socket closed", "ssl", "handshake", "tsi_")
TLS_PROBES = 2  # a server shutting down may close one connection; two in a row from the start mean TLS


class RegistrationFailed(FedbusError):
    """The coordinator refused the registration, or could not be reached: what the operator must fix."""

    @classmethod
    def of(cls, address: str, tls: bool, exc: grpc.aio.AioRpcError) -> RegistrationFailed:
        """The failure of a registration with the coordinator at `address` (over TLS or not), in one line."""
        what = f"{exc.code().name}: {exc.details()}"
        if exc.code() == grpc.StatusCode.UNAUTHENTICATED:
            why = "it refused the enrollment token (check FEDBUS_ENROLLMENT_TOKEN)"
        elif tls_mismatch(exc):
            why = "it looks like a TLS mismatch: " + (
                "this client speaks TLS (FEDBUS_TLS_CA is set); does the coordinator serve plaintext, or a "
                "certificate another CA signed?"
                if tls
                else "the coordinator speaks TLS and this client plaintext (set FEDBUS_TLS_CA to the CA of its "
                "certificate)"
            )
        elif exc.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
            why = "it could not be reached (is it running, and is FEDBUS_GRPC_ADDRESS right?)"
        else:
            why = "it did not register this client"
        return cls(f"cannot register with the coordinator at {address}: {why}; {what}")


def tls_mismatch(exc: grpc.aio.AioRpcError) -> bool:
    """Whether a failed call looks like a TLS client against a plaintext server, or the other way round."""
    details = (exc.details() or "").lower()
    return exc.code() == grpc.StatusCode.UNAVAILABLE and any(marker in details for marker in TLS_MISMATCH_MARKERS)


def _retryable(exc: BaseException) -> bool:
    """UNAVAILABLE, or RESOURCE_EXHAUSTED from load shedding (it carries a retry-after hint; a size cap does not)."""
    if not isinstance(exc, grpc.aio.AioRpcError):
        return False
    if exc.code() == grpc.StatusCode.UNAVAILABLE:
        return True
    shed = any(key == RETRY_AFTER_KEY for key, _ in exc.trailing_metadata() or ())
    if exc.code() == grpc.StatusCode.RESOURCE_EXHAUSTED and shed:
        return True
    # grpc.aio can report a server's early abort of a client stream as this INTERNAL error, hiding the real
    # code (grpc/grpc#36066), e.g. load shedding of a multi-chunk upload: retrying recovers the real answer.
    return exc.code() == grpc.StatusCode.INTERNAL and bool(exc.details() == MASKED_ABORT)


@dataclass(frozen=True, slots=True, kw_only=True)
class Registration:
    client_id: str
    token: str
    secret: str = ""  # handed out at a first registration only: what gets this identity back


class FederationClient:
    """One channel to the coordinator; `token` is set by `register`."""

    def __init__(
        self,
        address: str,
        *,
        deadline_s: float = 60.0,
        attempts: int = 5,
        chunk_size: int = CHUNK_SIZE,
        tls: ClientTls | None = None,
    ) -> None:
        options: list[tuple[str, int | str]] = [
            ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
            ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
            ("grpc.keepalive_time_ms", KEEPALIVE_MS),
            ("grpc.keepalive_timeout_ms", KEEPALIVE_TIMEOUT_MS),
            ("grpc.keepalive_permit_without_calls", 0),
            ("grpc.http2.max_pings_without_data", 0),
        ]
        if tls is None:
            self._channel = grpc.aio.insecure_channel(address, options=options)
        else:
            if tls.server_name:
                options.append(("grpc.ssl_target_name_override", tls.server_name))
            self._channel = grpc.aio.secure_channel(address, tls.credentials(), options=options)
        self._stub = pb_grpc.FederationStub(self._channel)  # type: ignore[no-untyped-call]
        self._deadline = deadline_s
        self._attempts = attempts
        self._chunk_size = chunk_size
        self.token = ""

    async def close(self) -> None:
        await self._channel.close()

    def _metadata(self, token: str | None = None) -> tuple[tuple[str, str], ...]:
        return (("authorization", f"Bearer {token or self.token}"),)

    async def _retrying(
        self, call: Callable[[], Awaitable[T]], retryable: Callable[[BaseException], bool] = _retryable
    ) -> T:
        retrying = AsyncRetrying(
            retry=retry_if_exception(retryable),
            stop=stop_after_attempt(self._attempts),
            wait=wait_exponential_jitter(multiplier=0.2, max=5.0),
            reraise=True,
        )
        return await retrying(call)

    async def register(
        self, enrollment_token: str, capabilities: ClientCapabilities, instance_name: str = "", secret: str = ""
    ) -> Registration:
        """An identity: a new one, or the one of `instance_name` when `secret` is the one it was given.

        A TLS mismatch is not retried once the first TLS_PROBES attempts all looked like one: its
        AioRpcError comes at once rather than after every retry (RegistrationFailed.of tells it in words).
        """
        request = pb.RegisterRequest(
            capabilities=pb.Capabilities(
                device=capabilities.device,
                cores=capabilities.cores,
                memory_bytes=capabilities.memory_bytes,
                hostname=capabilities.hostname,
                own_data=capabilities.own_data,
            ),
            instance_name=instance_name,
            client_secret=secret,
        )

        attempts = looked_like_tls = 0

        async def call() -> pb.RegisterReply:
            nonlocal attempts, looked_like_tls
            attempts += 1
            try:
                reply: pb.RegisterReply = await self._stub.Register(
                    request, metadata=self._metadata(enrollment_token), timeout=self._deadline
                )
            except grpc.aio.AioRpcError as exc:
                looked_like_tls += tls_mismatch(exc)
                raise
            return reply

        def retryable(exc: BaseException) -> bool:
            return _retryable(exc) and not (looked_like_tls == attempts == TLS_PROBES)

        reply = await self._retrying(call, retryable)
        self.token = reply.client_token
        return Registration(
            client_id=reply.client_id,
            token=reply.client_token,
            secret=reply.client_secret,
        )

    async def download_model(self, run_id: str, version: int, expected_digest: str, round_: int = 0) -> bytes:
        """The model's bytes, verified against `expected_digest` (DigestMismatch otherwise); with `round_`,
        FAILED_PRECONDITION once that round has closed."""

        async def call() -> bytes:
            stream = self._stub.DownloadModel(
                pb.DownloadRequest(run_id=run_id, model_version=version, round=round_),
                metadata=self._metadata(),
                timeout=self._deadline,
            )
            assembler: ChunkAssembler | None = None
            async for chunk in stream:
                if assembler is None:
                    manifest = chunk.manifest
                    if manifest.digest != expected_digest:
                        raise DigestMismatch(f"server offers {manifest.digest}, round names {expected_digest}")
                    assembler = ChunkAssembler(
                        expected_size=manifest.size, expected_digest=manifest.digest, max_size=MAX_MODEL_BYTES
                    )
                assembler.add(chunk.data)
            if assembler is None:
                raise DigestMismatch("empty model stream")
            return assembler.finish()

        return await self._retrying(call)

    async def upload(self, header: UploadHeader, payload: bytes) -> pb.UploadReply:
        pb_header = pb.UpdateHeader(
            run_id=header.run_id,
            round=header.round,
            client_id=header.client_id,
            base_model_version=header.base_model_version,
            num_samples=header.num_samples,
            metrics=header.metrics,
            epsilon=header.epsilon,
            codec=header.codec,
            total_size=header.total_size,
            sha256=header.sha256,
            raw_bytes=header.raw_bytes,
        )

        async def chunks() -> AsyncIterator[pb.UpdateChunk]:
            first = True
            for piece in iter_chunks(payload, self._chunk_size):
                yield pb.UpdateChunk(header=pb_header if first else None, data=bytes(piece))
                first = False

        async def call() -> pb.UploadReply:
            reply: pb.UploadReply = await self._stub.UploadUpdate(
                chunks(), metadata=self._metadata(), timeout=self._deadline
            )
            return reply

        return await self._retrying(call)

    async def decline(self, run_id: str, round_: int, reason: str) -> None:
        async def call() -> pb.DeclineReply:
            reply: pb.DeclineReply = await self._stub.Decline(
                pb.DeclineRequest(run_id=run_id, round=round_, reason=reason),
                metadata=self._metadata(),
                timeout=self._deadline,
            )
            return reply

        await self._retrying(call)
