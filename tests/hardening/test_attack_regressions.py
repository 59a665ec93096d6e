"""Regressions for the defects an outside attack found at the gRPC edge, each against the real grpc.aio server:
identity takeover, idle streams holding every upload slot, privacy claims taken on trust, header numbers
that stall a run, updates that poison the model, and a damaged upload that ends an honest client's round.
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
from collections.abc import AsyncIterator

import grpc
import numpy as np
import pytest

from contracts.compression import compress_update, parse_compression
from contracts.config import PrivacyConfig, RoundConfig, RunConfig
from contracts.envelope import Envelope
from contracts.events import ModelInitialized, RoundStarted, UpdateAccepted, UpdateRejected
from contracts.proto.fedbus.v1 import federation_pb2 as pb
from contracts.proto.fedbus.v1 import federation_pb2_grpc as pb_grpc
from contracts.tensor_codec import encode_with_manifest
from contracts.uploads import ClientCapabilities, UploadHeader
from contracts.wire import RETRY_AFTER_KEY
from services.coordinator.federation_servicer import UploadLimits
from tests.integration.grpc_world import World, code_of, update_payload, world
from workers.client.transport import FederationClient


def bearer(token: str) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {token}"),)


async def open_run(w: World, config: RunConfig) -> RoundStarted:
    """A second run in the world's coordinator, with round 1 open for every client."""
    run_id = await w.coordinator.create_run(config)
    data, manifest = encode_with_manifest(w.model)
    await w.log.put_blob(manifest.digest, "model", data)
    init = ModelInitialized(run_id=run_id, model_version=0, model_digest=manifest.digest, num_parameters=36)
    await w.log.append(f"run:{run_id}", [Envelope(event=init)])
    await w.coordinator.advance(run_id)
    events = [r.envelope.event for r in await w.log.read_stream(f"run:{run_id}")]
    return next(e for e in events if isinstance(e, RoundStarted))


def header_in(w: World, started: RoundStarted, client: int, payload: bytes, **overrides: object) -> UploadHeader:
    header = w.header_for(w.clients[client][1], payload, run_id=started.run_id, round=started.round)
    return dataclasses.replace(header, **overrides)  # type: ignore[arg-type]


async def rejections(w: World, run_id: str) -> list[UpdateRejected]:
    return [
        r.envelope.event
        for r in await w.log.read_stream(f"run:{run_id}")
        if isinstance(r.envelope.event, UpdateRejected)
    ]


# 1. Identity takeover -------------------------------------------------------------------------------------------


def test_an_instance_name_is_handed_back_only_to_the_holder_of_its_secret() -> None:
    async def scenario() -> None:
        async with world(clients=1) as w:
            channel = grpc.aio.insecure_channel(w.address)
            stub = pb_grpc.FederationStub(channel)  # type: ignore[no-untyped-call]
            enrol = bearer(w.tokens.enrollment_token)
            try:
                owner = await stub.Register(pb.RegisterRequest(instance_name="site-a"), metadata=enrol)
                assert owner.client_secret, "a first registration hands out a client secret"

                for secret in ("", "guessed", owner.client_secret[:-1] + "x"):
                    with pytest.raises(grpc.aio.AioRpcError) as refused:
                        ask = pb.RegisterRequest(instance_name="site-a", client_secret=secret)
                        await stub.Register(ask, metadata=enrol)
                    assert code_of(refused.value) == grpc.StatusCode.ALREADY_EXISTS
                    assert owner.client_id in (refused.value.details() or "")

                ask = pb.RegisterRequest(instance_name="site-a", client_secret=owner.client_secret)
                back = await stub.Register(ask, metadata=enrol)
                assert back.client_id == owner.client_id and back.client_secret == ""
            finally:
                await channel.close()

    asyncio.run(scenario())


def test_an_evicted_identity_frees_its_instance_name_for_a_new_one() -> None:
    async def scenario() -> None:
        async with world(clients=1) as w:
            client = FederationClient(w.address, attempts=1)
            try:
                old = await client.register(w.tokens.enrollment_token, ClientCapabilities(), "site-b")
                await w.coordinator.clients.evict(old.client_id, "lost its disk")
                new = await client.register(w.tokens.enrollment_token, ClientCapabilities(), "site-b")
                assert new.client_id != old.client_id and new.secret
            finally:
                await client.close()

    asyncio.run(scenario())


# 3. Idle upload streams -----------------------------------------------------------------------------------------


async def header_then_silence(stub: pb_grpc.FederationStub, token: str, header: pb.UpdateHeader) -> grpc.StatusCode:
    """An upload that sends its header and then nothing, until the server gives up on it."""
    forever = asyncio.Event()

    async def chunks() -> AsyncIterator[pb.UpdateChunk]:
        yield pb.UpdateChunk(header=header)
        await forever.wait()

    try:
        await stub.UploadUpdate(chunks(), metadata=bearer(token), timeout=30)
    except grpc.aio.AioRpcError as error:
        return error.code()
    raise AssertionError("an idle upload was accepted")


def wire_header(h: UploadHeader) -> pb.UpdateHeader:
    return pb.UpdateHeader(
        run_id=h.run_id, round=h.round, client_id=h.client_id, base_model_version=h.base_model_version,
        num_samples=h.num_samples, metrics=h.metrics, codec=h.codec, total_size=h.total_size, sha256=h.sha256,
        raw_bytes=h.raw_bytes,
    )  # fmt: skip


def test_idle_streams_lose_their_slots_and_a_client_holds_at_most_one() -> None:
    async def scenario() -> None:
        limits = UploadLimits(max_concurrent=2, idle_s=1.0, max_s=30.0)
        async with world(clients=3, uploads=limits, attempts=30) as w:
            channel = grpc.aio.insecure_channel(w.address)
            stub = pb_grpc.FederationStub(channel)  # type: ignore[no-untyped-call]
            payload = update_payload(w.model)
            headers = [wire_header(w.header_for(reg, payload)) for _, reg in w.clients]
            tokens = [reg.token for _, reg in w.clients]
            try:
                # Streams without a valid token hold nothing: the slots stay free for real clients.
                for _ in range(10):
                    with pytest.raises(grpc.aio.AioRpcError) as anonymous:
                        await stub.UploadUpdate(iter([pb.UpdateChunk(header=headers[0])]), metadata=bearer("forged"))
                    assert code_of(anonymous.value) == grpc.StatusCode.UNAUTHENTICATED

                idle = [asyncio.create_task(header_then_silence(stub, tokens[i], headers[i])) for i in (0, 1)]
                await asyncio.sleep(0.3)
                # Client 0 already has a stream open: a second one is shed at once.
                with pytest.raises(grpc.aio.AioRpcError) as second:
                    await stub.UploadUpdate(iter([pb.UpdateChunk(header=headers[0])]), metadata=bearer(tokens[0]))
                assert code_of(second.value) == grpc.StatusCode.RESOURCE_EXHAUSTED

                # Every slot is held by an idle stream: client 2 is shed, retries, and gets in once they time out.
                transport, reg = w.clients[2]
                reply = await transport.upload(w.header_for(reg, payload), payload)
                assert reply.accepted
                assert await asyncio.gather(*idle) == [grpc.StatusCode.DEADLINE_EXCEEDED] * 2
                assert w.coordinator.metrics.uploads_shed._value.get() >= 2
            finally:
                await channel.close()

    asyncio.run(scenario())


def test_shed_uploads_still_sending_get_their_retry_hint_and_never_internal() -> None:
    """grpc.aio reports a server's early end of a client stream as INTERNAL "Internal error from Core" when the
    client is still writing (grpc/grpc#36066). Twenty 3 MiB uploads at once from one client, fifteen times: one
    at a time is read and refused for its header, the others are shed, and before shedding drained the stream
    as every other refusal does, 31-50 of the 300 came back INTERNAL, without their retry hint."""

    async def scenario() -> collections.Counter[tuple[str, str]]:
        async with world(clients=1) as w:
            channel = grpc.aio.insecure_channel(w.address)
            _, reg = w.clients[0]
            payload = update_payload(w.model)
            header = wire_header(w.header_for(reg, payload))
            header.num_samples = 0  # refused once it is read
            # Serialized once: the client's writes then follow each other as fast as the channel takes them.
            big = [pb.UpdateChunk(header=header).SerializeToString()]
            big += [pb.UpdateChunk(data=bytes(1 << 20)).SerializeToString()] * 3
            send = channel.stream_unary("/fedbus.v1.Federation/UploadUpdate")

            async def upload() -> tuple[str, str]:
                with pytest.raises(grpc.aio.AioRpcError) as refused:
                    await send(iter(big), metadata=bearer(reg.token), timeout=20)
                hint = any(key == RETRY_AFTER_KEY for key, _ in refused.value.trailing_metadata() or ())
                return code_of(refused.value).name, "retry hint" if hint else "no hint"

            outcomes: collections.Counter[tuple[str, str]] = collections.Counter()
            try:
                for _ in range(15):
                    outcomes.update(await asyncio.gather(*(upload() for _ in range(20))))
            finally:
                await channel.close()
            return outcomes

    outcomes = asyncio.run(scenario())
    assert set(outcomes) == {("INVALID_ARGUMENT", "no hint"), ("RESOURCE_EXHAUSTED", "retry hint")}, outcomes
    assert outcomes["RESOURCE_EXHAUSTED", "retry hint"] >= 15 * 10  # most of them were shed


# 4. Privacy claims ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("epsilon", "status", "reason"),
    [
        (50.0, grpc.StatusCode.FAILED_PRECONDITION, "budget_exceeded"),
        (None, grpc.StatusCode.INVALID_ARGUMENT, "epsilon_missing"),
    ],
)
def test_a_private_run_refuses_updates_past_its_budget_or_without_epsilon(
    epsilon: float | None, status: grpc.StatusCode, reason: str
) -> None:
    async def scenario() -> None:
        async with world(clients=2) as w:
            config = RunConfig(clients=2, rounds=2, privacy=PrivacyConfig(epsilon=3.0), round=RoundConfig(quorum=1.0))
            started = await open_run(w, config)
            payload = update_payload(w.model)
            transport = w.clients[0][0]

            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await transport.upload(header_in(w, started, 0, payload, epsilon=epsilon), payload)

            assert code_of(refused.value) == status and reason in (refused.value.details() or "")
            assert [r.reason for r in await rejections(w, started.run_id)] == [reason]
            # Within the budget, the same update is accepted.
            within = await w.clients[1][0].upload(header_in(w, started, 1, payload, epsilon=2.9), payload)
            assert within.accepted

    asyncio.run(scenario())


# 9 and 13. Header numbers and strings ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("metrics", {"loss": 1e308}),
        ("metrics", {f"m{i}": 0.0 for i in range(10_000)}),
        ("metrics", {"x" * 100_000: 0.0}),
        ("round", 2**31),
        ("num_samples", 2**35),
        ("base_model_version", 2**40),
        ("codec", "int9"),
        ("run_id", "r" * (1 << 20)),
    ],
    ids=["huge-loss", "10k-metrics", "long-name", "round-2^31", "samples-2^35", "version-2^40", "codec", "1MiB-id"],
)
def test_header_numbers_and_strings_out_of_bounds_are_invalid_arguments(field: str, value: object) -> None:
    async def scenario() -> None:
        async with world(clients=1) as w:
            channel = grpc.aio.insecure_channel(w.address, options=[("grpc.max_send_message_length", 8 << 20)])
            stub = pb_grpc.FederationStub(channel)  # type: ignore[no-untyped-call]
            _, reg = w.clients[0]
            payload = update_payload(w.model)
            header = wire_header(w.header_for(reg, payload))
            if field == "metrics":
                header.metrics.clear()
                header.metrics.update(value)
            else:
                setattr(header, field, value)
            try:
                chunks = [pb.UpdateChunk(header=header, data=payload)]
                with pytest.raises(grpc.aio.AioRpcError) as refused:
                    await stub.UploadUpdate(iter(chunks), metadata=bearer(reg.token), timeout=10)
                assert code_of(refused.value) in (grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.RESOURCE_EXHAUSTED)
                assert not await w.events_of(UpdateAccepted)
            finally:
                await channel.close()

    asyncio.run(scenario())


# 10. A poisoning update -----------------------------------------------------------------------------------------


def int8_update_with_scale(model: dict[str, np.ndarray], scale: float) -> bytes:
    """A well-formed int8 update whose dequantization scale no real update has (as an attacker writes it)."""
    delta = {k: np.full(v.shape, 127 * scale, dtype=np.float32) for k, v in model.items()}
    return compress_update(delta, parse_compression("int8")).payload


def test_the_default_norm_bound_refuses_an_update_that_would_blow_up_the_model() -> None:
    async def scenario() -> None:
        async with world(clients=2) as w:
            started = await open_run(w, RunConfig(clients=2, rounds=2, privacy=PrivacyConfig(enabled=False)))
            transport = w.clients[0][0]
            poison = int8_update_with_scale(w.model, 1e30)

            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await transport.upload(header_in(w, started, 0, poison, codec="int8"), poison)

            assert code_of(refused.value) == grpc.StatusCode.INVALID_ARGUMENT
            assert [r.reason for r in await rejections(w, started.run_id)] in (["norm_exceeded"], ["not_finite"])
            honest = update_payload(w.model, codec="int8")
            assert (await w.clients[1][0].upload(header_in(w, started, 1, honest, codec="int8"), honest)).accepted

    asyncio.run(scenario())


# 14. A damaged upload does not end an honest client's round ---------------------------------------------------


def test_a_client_whose_upload_was_damaged_sends_it_again_within_the_round() -> None:
    async def scenario() -> None:
        async with world(clients=3) as w:
            payload = update_payload(w.model)
            damaged = payload[:-1] + bytes([payload[-1] ^ 0xFF])
            (first, reg0), (second, reg1), (third, reg2) = w.clients

            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await first.upload(w.header_for(reg0, payload), damaged)
            assert code_of(refused.value) == grpc.StatusCode.DATA_LOSS
            for transport, reg in ((second, reg1), (third, reg2)):
                assert (await transport.upload(w.header_for(reg, payload), payload)).accepted

            again = await first.upload(w.header_for(reg0, payload), payload)

            assert again.accepted and not again.late
            accepted = await w.events_of(UpdateAccepted)
            assert sorted(e.client_id for e in accepted) == sorted(r.client_id for r in (reg0, reg1, reg2))  # type: ignore[attr-defined]

    asyncio.run(scenario())


def test_header_sha256_must_be_hex() -> None:
    with pytest.raises(ValueError, match=r"header\.sha256"):
        UploadHeader(
            run_id="r", round=1, client_id="c", base_model_version=0, num_samples=1, codec="fp32", total_size=1,
            sha256="Z" * 64,
        )  # fmt: skip


# 14. A client catching up on closed rounds spends nothing on them ---------------------------------------------


def test_the_model_of_a_closed_round_is_refused_to_a_client_asking_for_that_round() -> None:
    async def scenario() -> None:
        async with world(clients=1) as w:
            transport, reg = w.clients[0]
            digest = w.round.model_digest
            assert await transport.download_model(w.run_id, 0, digest, w.round.round)  # open: served
            payload = update_payload(w.model)
            assert (await transport.upload(w.header_for(reg, payload), payload)).accepted  # the quorum: closed

            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await transport.download_model(w.run_id, 0, digest, w.round.round)

            assert code_of(refused.value) == grpc.StatusCode.FAILED_PRECONDITION
            assert "round_closed" in (refused.value.details() or "")
            assert await transport.download_model(w.run_id, 0, digest)  # without a round: the model itself

    asyncio.run(scenario())
