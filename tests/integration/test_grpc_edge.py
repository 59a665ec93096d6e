"""The gRPC edge against a real grpc.aio server: uploads accepted or refused with their status codes."""

from __future__ import annotations

import asyncio

import grpc
import numpy as np
import pytest

from contracts.compression import compress_update, parse_compression
from contracts.events import QuorumReached, UpdateAccepted, UpdateRejected
from contracts.proto.fedbus.v1 import federation_pb2 as pb
from contracts.proto.fedbus.v1 import federation_pb2_grpc as pb_grpc
from contracts.tensor_codec import decode_tensors
from tests.integration.grpc_world import code_of, update_payload, world


def test_a_valid_update_is_accepted_and_recorded() -> None:
    async def scenario() -> None:
        async with world() as w:
            transport, reg = w.clients[0]
            payload = update_payload(w.model)

            reply = await transport.upload(w.header_for(reg, payload), payload)

            assert reply.accepted and not reply.late
            [accepted] = await w.events_of(UpdateAccepted)
            assert accepted.client_id == reg.client_id and accepted.digest == w.header_for(reg, payload).sha256
            assert await w.log.get_blob(accepted.digest) == payload

    asyncio.run(scenario())


@pytest.mark.parametrize(
    ("mutate", "status", "reason"),
    [
        ("tamper", grpc.StatusCode.DATA_LOSS, "digest_mismatch"),
        ("wrong_shape", grpc.StatusCode.INVALID_ARGUMENT, "wrong_shape"),
        ("nan", grpc.StatusCode.INVALID_ARGUMENT, "not_finite"),
        ("missing_key", grpc.StatusCode.INVALID_ARGUMENT, "missing_keys"),
        ("garbage", grpc.StatusCode.INVALID_ARGUMENT, "corrupt"),
    ],
)
def test_a_bad_update_is_refused_with_its_code_and_an_event(mutate: str, status: grpc.StatusCode, reason: str) -> None:
    async def scenario() -> None:
        async with world() as w:
            transport, reg = w.clients[0]
            rng = np.random.default_rng(3)
            delta = {k: (rng.standard_normal(v.shape) * 0.01).astype(np.float32) for k, v in w.model.items()}
            if mutate == "wrong_shape":
                delta["conv.weight"] = delta["conv.weight"].reshape(4, 8).T.copy()[:, :3]
            if mutate == "nan":
                delta["conv.bias"][1] = np.nan
            if mutate == "missing_key":
                del delta["conv.bias"]
            payload = compress_update(delta, parse_compression("fp32")).payload
            header = w.header_for(reg, payload)
            if mutate == "tamper":
                payload = payload[:-1] + bytes([payload[-1] ^ 0xFF])
            if mutate == "garbage":
                payload = b"\x00not an update" * 10
                header = w.header_for(reg, payload)

            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await transport.upload(header, payload)

            assert code_of(refused.value) == status
            [rejected] = await w.events_of(UpdateRejected)
            assert rejected.reason == reason and rejected.client_id == reg.client_id
            assert await w.events_of(UpdateAccepted) == []

    asyncio.run(scenario())


def test_the_round_goes_on_after_a_rejection() -> None:
    async def scenario() -> None:
        async with world(clients=2) as w:
            (t0, r0), (t1, r1) = w.clients
            bad = update_payload(w.model, scale=float("nan"))
            with pytest.raises(grpc.aio.AioRpcError):
                await t0.upload(w.header_for(r0, bad), bad)

            good = update_payload(w.model)
            await t1.upload(w.header_for(r1, good), good)

            [quorum] = await w.events_of(QuorumReached)
            assert len(quorum.update_ids) == 1 and quorum.partial

    asyncio.run(scenario())


def test_a_second_update_for_the_same_round_already_exists() -> None:
    async def scenario() -> None:
        async with world() as w:
            transport, reg = w.clients[0]
            payload = update_payload(w.model)
            await transport.upload(w.header_for(reg, payload), payload)

            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await transport.upload(w.header_for(reg, payload), payload)

            assert code_of(refused.value) == grpc.StatusCode.ALREADY_EXISTS

    asyncio.run(scenario())


def test_a_client_cannot_upload_as_another() -> None:
    async def scenario() -> None:
        async with world() as w:
            transport, _ = w.clients[0]
            _, other = w.clients[1]
            payload = update_payload(w.model)

            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await transport.upload(w.header_for(other, payload), payload)

            assert code_of(refused.value) == grpc.StatusCode.PERMISSION_DENIED

    asyncio.run(scenario())


def test_calls_without_a_valid_token_are_unauthenticated() -> None:
    async def scenario() -> None:
        async with world() as w:
            transport, reg = w.clients[0]
            transport.token = reg.token[:-2] + "xx"

            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await transport.download_model(w.run_id, 0, w.round.model_digest)

            assert code_of(refused.value) == grpc.StatusCode.UNAUTHENTICATED

    asyncio.run(scenario())


def test_stale_model_and_closed_round_are_failed_preconditions() -> None:
    async def scenario() -> None:
        async with world() as w:
            transport, reg = w.clients[0]
            payload = update_payload(w.model)

            with pytest.raises(grpc.aio.AioRpcError) as stale:
                await transport.upload(w.header_for(reg, payload, base_model_version=7), payload)
            with pytest.raises(grpc.aio.AioRpcError) as closed:
                await transport.upload(w.header_for(reg, payload, round=5), payload)

            assert code_of(stale.value) == grpc.StatusCode.FAILED_PRECONDITION
            assert code_of(closed.value) == grpc.StatusCode.FAILED_PRECONDITION

    asyncio.run(scenario())


def test_every_download_of_a_model_is_the_same_stream_and_one_resumed_at_an_offset_gets_the_rest() -> None:
    """The servicer keeps a model's serialized chunks for the next downloads; a download at an offset is built as
    it goes, its first message still carrying the manifest."""

    async def scenario() -> None:
        async with world(big=True) as w:
            transport, reg = w.clients[0]
            whole = [await transport.download_model(w.run_id, 0, w.round.model_digest) for _ in range(2)]
            offset = (1 << 20) + 5
            async with grpc.aio.insecure_channel(w.address) as channel:
                stub = pb_grpc.FederationStub(channel)
                ask = pb.DownloadRequest(run_id=w.run_id, model_version=0, offset=offset)
                chunks = [
                    c async for c in stub.DownloadModel(ask, metadata=(("authorization", f"Bearer {reg.token}"),))
                ]

            assert whole[0] == whole[1]
            np.testing.assert_array_equal(decode_tensors(whole[0])["conv.weight"], w.model["conv.weight"])
            assert chunks[0].manifest.digest == w.round.model_digest and not chunks[1].HasField("manifest")
            assert b"".join(c.data for c in chunks) == whole[0][offset:]

    asyncio.run(scenario())


def test_a_model_larger_than_4_mib_streams_in_chunks_both_ways() -> None:
    async def scenario() -> None:
        async with world(big=True) as w:
            transport, reg = w.clients[0]

            data = await transport.download_model(w.run_id, 0, w.round.model_digest)
            payload = update_payload(w.model, codec="fp32")
            reply = await transport.upload(w.header_for(reg, payload), payload)

            assert len(data) > 4 << 20 and len(payload) > 4 << 20
            np.testing.assert_array_equal(decode_tensors(data)["conv.weight"], w.model["conv.weight"])
            assert reply.accepted

    asyncio.run(scenario())


def test_clients_out_of_budget_decline_and_the_run_ends_on_budget() -> None:
    async def scenario() -> None:
        async with world(clients=2) as w:
            for transport, _ in w.clients:
                await transport.decline(w.run_id, w.round.round, "privacy_budget")

            events = [r.envelope.event for r in await w.log.read_stream(f"run:{w.run_id}")]

            assert [type(e).__name__ for e in events[-4:]] == [
                "ClientDeclined",
                "ClientDeclined",
                "RoundFailed",
                "RunCompleted",
            ]
            assert events[-1].reason == "budget"

    asyncio.run(scenario())


def test_a_client_cannot_decline_a_round_it_was_not_selected_for() -> None:
    async def scenario() -> None:
        async with world() as w:
            transport, _ = w.clients[0]

            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await transport.decline(w.run_id, 9, "privacy_budget")

            assert code_of(refused.value) == grpc.StatusCode.FAILED_PRECONDITION

    asyncio.run(scenario())
