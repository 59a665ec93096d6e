"""Upload admission: whether an update may come in, reading it within bounds, and the verdict on its bytes.

In order: the header (open round, selected, not yet sent, base model, size cap, privacy) before a byte is read
(the gRPC edge already holds each client to one upload stream at a time); the
stream assembled within the size cap and checked against the header's sha256; the bytes decoded with bounded
decompression and validated against the model's manifest (keys, shapes, dtypes, finite, norm); then stored and
accepted. Each refusal is an UploadRefused with its reason code and, for a run that exists, an UpdateRejected.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterable

from contracts.compression import decompress_update
from contracts.errors import CodecError, DigestMismatch
from contracts.events import Event, UpdateAccepted
from contracts.run_state import RunState
from contracts.tensor_codec import ChunkAssembler, Manifest, TooLarge
from contracts.update_validation import RejectReason, norm_bound, validate_update
from contracts.uploads import UploadHeader
from ops.telemetry import tracer
from services.coordinator import decide
from services.coordinator.commit import RunLedger
from services.coordinator.errors import UploadRefused
from services.coordinator.model_serving import ModelServer
from services.coordinator.registry import ClientRegistry

_TRACER = tracer("fedbus.coordinator")


class UploadAdmission:
    def __init__(self, runs: RunLedger, models: ModelServer, clients: ClientRegistry) -> None:
        self._runs = runs
        self._models = models
        self._clients = clients

    async def receive(
        self, client_id: str, header: UploadHeader, first: bytes, rest: AsyncIterable[bytes]
    ) -> UpdateAccepted:
        """Admit, read, validate, store and accept one update; UploadRefused (recorded) when it is refused."""
        # The run as last known first: an upload it admits is checked again on the current run when accepted
        # (RunLedger.commit), so only a refusal needs the run read first.
        run = self._runs.state(header.run_id)
        refusal = decide.header_refusal(run, client_id, header)
        if refusal is not None:
            run = await self._runs.refresh(header.run_id)
            refusal = decide.header_refusal(run, client_id, header)
        if refusal is not None:
            # A duplicate is not recorded: the client's first update stands, and a retry must not count as an answer.
            raise refusal if refusal.reason is RejectReason.DUPLICATE else await self._recorded(header, refusal)
        payload = await self._read(header, first, rest, run.config.round.max_update_bytes)
        with _TRACER.start_as_current_span("validate and accept update", attributes={"fedbus.bytes": len(payload)}):
            return await self._accept(header, payload)

    async def _read(self, header: UploadHeader, first: bytes, rest: AsyncIterable[bytes], limit: int) -> bytes:
        assembler = ChunkAssembler(expected_size=header.total_size, expected_digest=header.sha256, max_size=limit)
        try:
            assembler.add(first)
            async for chunk in rest:
                assembler.add(chunk)
            return assembler.finish()
        except TooLarge as exc:
            raise await self._recorded(header, UploadRefused(RejectReason.TOO_LARGE, str(exc))) from exc
        except DigestMismatch as exc:
            raise await self._recorded(header, UploadRefused(RejectReason.DIGEST_MISMATCH, str(exc))) from exc
        except CodecError as exc:
            raise await self._recorded(header, UploadRefused(RejectReason.CORRUPT, str(exc))) from exc

    async def _accept(self, header: UploadHeader, payload: bytes) -> UpdateAccepted:
        run = self._runs.state(header.run_id)
        current = run.current
        moved_on = current is not None and current.round != header.round and not run.config.strategy.asynchronous
        if current is None or moved_on:
            raise UploadRefused(RejectReason.ROUND_CLOSED, f"round {header.round} closed while uploading")
        manifest = await self._models.manifest(current.model_digest)
        bound = norm_bound(run.config.round, await self._models.norm(current.model_digest))
        refusal = _verdict(payload, manifest, max_norm=bound)
        if refusal is not None:
            raise await self._recorded(header, refusal)
        update_id, pool = uuid.uuid4().hex, self._clients.pool()
        accepted: list[UpdateAccepted] = []

        def decision(state: RunState, now: float) -> list[Event]:
            events = decide.accept(state, header, update_id=update_id, wire_bytes=len(payload), pool=pool, now=now)
            accepted[:] = [e for e in events if isinstance(e, UpdateAccepted)]
            return events

        await self._runs.commit(
            header.run_id,
            decision,
            lambda state, now: decide.due(state, pool, now),
            fresh=False,
            blobs=[(header.sha256, "update", payload)],
        )
        return accepted[0]

    async def _recorded(self, header: UploadHeader, refusal: UploadRefused) -> UploadRefused:
        """Append UpdateRejected for a run that exists; return the refusal for the edge to raise."""
        if header.run_id in self._runs.run_ids():
            pool = self._clients.pool()
            await self._runs.commit(
                header.run_id,
                lambda state, now: decide.reject(state, header, refusal, pool, now),
                lambda state, now: decide.due(state, pool, now),
            )
        return refusal


def _verdict(payload: bytes, manifest: Manifest, *, max_norm: float | None) -> UploadRefused | None:
    """Decode and validate an update, keeping only the verdict.

    The decoded tensors (the model's size in float32) die here, before the caller awaits the log: kept across
    those awaits, every upload in flight held one, and the coordinator's memory grew with the number of clients
    (benchmarks/scale.py measured 320 MB of them at 50 clients of a 1.7M-parameter model).
    """
    numel = sum(_numel(s.shape) for s in manifest.tensors)
    try:
        # zstd allocates what its frame declares before any record is checked: cap that near the model's
        # size (8 bytes an element covers top-k indices + values and int64 tensors), not the 512 MiB default.
        update = decompress_update(payload, max_elements=numel, max_decompressed_bytes=8 * numel + (1 << 20))
    except CodecError as exc:
        return UploadRefused(RejectReason.CORRUPT, str(exc))
    rejection = validate_update(update, manifest.tensors, max_norm=max_norm)
    return None if rejection is None else UploadRefused(rejection.reason, rejection.detail)


def _numel(shape: tuple[int, ...]) -> int:
    total = 1
    for dim in shape:
        total *= dim
    return total
