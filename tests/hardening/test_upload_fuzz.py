"""Hypothesis-driven raw UploadUpdate streams against the real grpc.aio server: every bad input is refused
with its documented status (never UNKNOWN/INTERNAL), only valid ones are accepted, and an oversized stream
is cut off early instead of being buffered.

The table of kinds and codes is `EXPECTED` in tests/hardening/upload_cases.py; `pytest -s` prints how many
inputs of each kind were tried, and tests/hardening/artifacts/inputs_tried.json keeps the counts.
"""

from __future__ import annotations

import tracemalloc
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass

import grpc
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from contracts.config import PrivacyConfig, RoundConfig, RunConfig
from contracts.envelope import Envelope
from contracts.errors import ConfigError
from contracts.events import ModelInitialized, QuorumReached, RoundStarted, UpdateAccepted, UpdateRejected
from contracts.proto.fedbus.v1 import federation_pb2 as pb
from contracts.proto.fedbus.v1 import federation_pb2_grpc as pb_grpc
from contracts.tensor_codec import encode_with_manifest
from contracts.update_validation import RejectReason
from contracts.uploads import UploadHeader
from services.coordinator.grpc_status import REASON_STATUS
from tests.hardening.loop_thread import LoopThread
from tests.hardening.tally import Tally
from tests.hardening.upload_cases import EXPECTED, Attempt, Target, build, header, recipes, zstd_bomb
from tests.integration.grpc_world import World, update_payload, world

CAP = 64 << 10
MASKED = "Internal error from Core"
Answer = tuple[grpc.StatusCode, str]  # round.max_update_bytes of the runs opened here
TALLY = Tally("upload_fuzz")


@dataclass
class Edge:
    loop: LoopThread
    world: World
    channel: grpc.aio.Channel
    stub: pb_grpc.FederationStub


@pytest.fixture(scope="module")
def edge() -> Iterator[Edge]:
    loop = LoopThread()
    context = world(clients=3)
    w = loop.run(context.__aenter__())

    async def connect() -> grpc.aio.Channel:
        return grpc.aio.insecure_channel(w.address)

    channel = loop.run(connect())
    try:
        yield Edge(loop, w, channel, pb_grpc.FederationStub(channel))  # type: ignore[no-untyped-call]
    finally:
        loop.run(channel.close())
        loop.run(context.__aexit__(None, None, None))
        loop.close()
        print("\n" + TALLY.table())
        print(f"written to {TALLY.write()}")


async def open_run(w: World) -> Target:
    """A fresh run in the shared coordinator with round 1 open for all three clients."""
    config = RunConfig(
        clients=3,
        rounds=3,
        privacy=PrivacyConfig(enabled=False),
        round=RoundConfig(quorum=1.0, timeout_s=3600, max_update_norm=1e6, max_update_bytes=CAP),
    )
    run_id = await w.coordinator.create_run(config)
    data, manifest = encode_with_manifest(w.model)
    await w.log.put_blob(manifest.digest, "model", data)
    init = ModelInitialized(run_id=run_id, model_version=0, model_digest=manifest.digest, num_parameters=36)
    await w.log.append(f"run:{run_id}", [Envelope(event=init)])
    await w.coordinator.advance(run_id)
    started = next(e for e in await events(w, run_id) if isinstance(e, RoundStarted))
    (_, me), (_, other) = w.clients[0], w.clients[1]
    return Target(
        run_id=run_id,
        round=started.round,
        model_version=started.model_version,
        model=w.model,
        client_id=me.client_id,
        token=me.token,
        other_client_id=other.client_id,
        enrollment_token=w.tokens.enrollment_token,
        cap=CAP,
    )


async def events(w: World, run_id: str) -> list[object]:
    return [r.envelope.event for r in await w.log.read_stream(f"run:{run_id}")]


async def send(stub: pb_grpc.FederationStub, chunks: list[pb.UpdateChunk], metadata: object) -> Answer:
    async def stream() -> AsyncIterator[pb.UpdateChunk]:
        for chunk in chunks:
            yield chunk

    try:
        await stub.UploadUpdate(stream(), metadata=metadata, timeout=20)
    except grpc.aio.AioRpcError as error:
        return error.code(), error.details() or ""
    return grpc.StatusCode.OK, ""


async def server_answer(w: World, run_id: str, answer: Answer) -> tuple[grpc.StatusCode, str]:
    """The status the server sent, and how the client saw it.

    grpc.aio clients may report INTERNAL "Internal error from Core" instead of the server's status when
    the server ends a client stream before the client is done writing (grpc/grpc#36066, fix in #43486):
    the server's code is then read from the UpdateRejected event it recorded with its reason.
    """
    code, details = answer
    if code != grpc.StatusCode.INTERNAL or details != MASKED:
        return code, code.name
    rejected = [e for e in await events(w, run_id) if isinstance(e, UpdateRejected)]
    assert rejected, "INTERNAL from the client library, and the server recorded no refusal"
    return REASON_STATUS[RejectReason(rejected[-1].reason)], f"{code.name}(masked)"


@pytest.mark.parametrize("kind", sorted(EXPECTED))
@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(data=st.data())
def test_every_upload_gets_its_documented_status_and_only_valid_ones_are_accepted(
    edge: Edge, kind: str, data: st.DataObject
) -> None:
    recipe = data.draw(recipes(kind))
    target = edge.loop.run(open_run(edge.world))
    attempt: Attempt = build(recipe, target)
    for before in attempt.before:
        assert edge.loop.run(send(edge.stub, before, attempt.metadata))[0] == grpc.StatusCode.OK

    answer = edge.loop.run(send(edge.stub, attempt.chunks, attempt.metadata))

    code, seen = edge.loop.run(server_answer(edge.world, target.run_id, answer))
    TALLY.add(recipe.kind, seen)
    assert code not in (grpc.StatusCode.UNKNOWN, grpc.StatusCode.INTERNAL)
    assert code == EXPECTED[recipe.kind], recipe
    recorded = edge.loop.run(events(edge.world, target.run_id))
    accepted = [e for e in recorded if isinstance(e, UpdateAccepted)]
    assert len(accepted) == (1 if recipe.kind in ("valid", "duplicate") else 0)


def test_an_oversized_stream_is_cut_off_without_buffering_it(edge: Edge) -> None:
    target = edge.loop.run(open_run(edge.world))
    block, blocks = bytes(1 << 20), 64  # 64 MiB offered against a 64 KiB cap
    yielded = [0]

    async def offer() -> Answer:
        async def stream() -> AsyncIterator[pb.UpdateChunk]:
            for index in range(blocks):
                yielded[0] += 1
                yield pb.UpdateChunk(
                    header=header(target, b"", "fp32", total_size=CAP) if index == 0 else None, data=block
                )

        try:
            await edge.stub.UploadUpdate(stream(), metadata=(("authorization", f"Bearer {target.token}"),), timeout=30)
        except grpc.aio.AioRpcError as error:
            return error.code(), error.details() or ""
        return grpc.StatusCode.OK, ""

    tracemalloc.start()
    try:
        answer = edge.loop.run(offer())
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()

    code, seen = edge.loop.run(server_answer(edge.world, target.run_id, answer))
    TALLY.add("oversized_stream_64MiB", seen)
    assert code == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert peak < 16 << 20, f"peak {peak / 2**20:.1f} MiB while 64 MiB were offered"
    assert yielded[0] < blocks
    rejected = [e for e in edge.loop.run(events(edge.world, target.run_id)) if isinstance(e, UpdateRejected)]
    assert [e.reason for e in rejected] == ["too_large"]


def test_a_small_zstd_frame_that_inflates_to_64_mib_is_refused_without_inflating_it(edge: Edge) -> None:
    target = edge.loop.run(open_run(edge.world))
    bomb = zstd_bomb(64 << 20)
    chunks = [pb.UpdateChunk(header=header(target, bomb, "fp32"), data=bomb)]
    metadata = (("authorization", f"Bearer {target.token}"),)

    tracemalloc.start()
    try:
        code, _ = edge.loop.run(send(edge.stub, chunks, metadata))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()

    TALLY.add("zstd_bomb_64MiB", code.name)
    assert len(bomb) < 64 << 10
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    assert peak < 16 << 20, f"peak {peak / 2**20:.1f} MiB for a {len(bomb)} byte upload"


def test_a_client_refused_then_accepted_counts_once_toward_the_round(edge: Edge) -> None:
    target = edge.loop.run(open_run(edge.world))
    (first, first_reg), (second, second_reg) = edge.world.clients[0], edge.world.clients[1]
    garbage, good = b"\x00not an update", update_payload(edge.world.model)

    async def scenario() -> list[object]:
        with pytest.raises(grpc.aio.AioRpcError):
            await first.upload(edge.world.header_for(first_reg, garbage, run_id=target.run_id), garbage)
        await first.upload(edge.world.header_for(first_reg, good, run_id=target.run_id), good)
        await second.upload(edge.world.header_for(second_reg, good, run_id=target.run_id), good)
        return await events(edge.world, target.run_id)

    recorded = edge.loop.run(scenario())

    # quorum 1.0 of three selected clients: two accepted updates (one after a refusal) must not close the round
    assert [type(e).__name__ for e in recorded if isinstance(e, UpdateAccepted | QuorumReached)] == [
        "UpdateAccepted",
        "UpdateAccepted",
    ]


@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        ({"epsilon": float("inf")}, "header.epsilon"),
        ({"metrics": {"loss": float("nan")}}, "header.metrics.loss"),
        ({"num_samples": 1 << 50}, "header.num_samples"),
    ],
)
def test_non_finite_or_absurd_header_numbers_are_refused_where_bytes_become_objects(
    overrides: dict[str, object], field: str
) -> None:
    fields: dict[str, object] = {
        "run_id": "r", "round": 1, "client_id": "c", "base_model_version": 0, "num_samples": 10,
        "codec": "int8", "total_size": 10, "sha256": "0" * 64, **overrides,
    }  # fmt: skip

    with pytest.raises(ConfigError) as refused:
        UploadHeader(**fields)  # type: ignore[arg-type]

    assert refused.value.field == field
