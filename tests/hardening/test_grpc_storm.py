"""A storm of malformed gRPC calls against the real grpc.aio server over a PostgreSQL log: random bytes for
every method, and well-formed messages whose fields are out of every bound (32-bit overflows, huge strings,
control characters, thousands of metric keys). Every call must get a real status — never UNKNOWN or
INTERNAL — nothing may be logged with a traceback, and honest clients must still be served afterwards.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import random
from collections.abc import Awaitable, Callable, Iterator

import grpc
import pytest

from contracts.proto.fedbus.v1 import federation_pb2 as pb
from contracts.tensor_codec import sha256_hex
from contracts.uploads import MAX_INT32
from persistence.sql_admin import create_database, drop_database
from persistence.sql_event_log import SqlEventLog
from tests.contract.conftest import PG_ADMIN_URL, new_database_name, require_services
from tests.integration.grpc_world import World, update_payload, world

CALLS = 5_200
SEED = 20261203
FORBIDDEN = {grpc.StatusCode.UNKNOWN, grpc.StatusCode.INTERNAL}
METHODS = ("Register", "DownloadModel", "UploadUpdate", "Decline")
Call = Callable[[], Awaitable[None]]


@pytest.fixture
def postgres_url() -> Iterator[str]:
    name = new_database_name()
    try:
        url = asyncio.run(create_database(PG_ADMIN_URL, name))
    except Exception as error:  # TransientError: the server is not there
        if require_services():
            pytest.fail(f"PostgreSQL required but unreachable: {error}")
        pytest.skip(f"PostgreSQL unreachable: {error}")
    yield url
    asyncio.run(drop_database(PG_ADMIN_URL, name))


def odd_text(rng: random.Random) -> str:
    pick = rng.randrange(6)
    if pick == 0:
        return ""
    if pick == 1:
        return "x" * rng.choice((256, 4096, 1 << 20))
    if pick == 2:
        return "".join(chr(rng.randrange(0, 32)) for _ in range(rng.randrange(1, 20)))
    if pick == 3:
        return "run:\x00" + str(rng.random())
    if pick == 4:
        return (
            "".join(chr(rng.randrange(0x80, 0x2FFFF)) for _ in range(rng.randrange(1, 40)))
            .encode("utf-8", "ignore")
            .decode("utf-8", "ignore")
        )
    return f"id-{rng.randrange(10**6)}"


def odd_int(rng: random.Random) -> int:
    return rng.choice((0, -1, 1, 2, MAX_INT32, MAX_INT32 + 1, 2**35, 2**40, 2**63 - 1, -(2**63)))


def odd_float(rng: random.Random) -> float:
    return rng.choice((0.0, -1.0, 1e308, -1e308, float("nan"), float("inf"), 2.5, 50.0, 1e-300))


class Storm:
    """Builds and fires the calls, tallying the status codes."""

    def __init__(self, w: World, channel: grpc.aio.Channel, rng: random.Random) -> None:
        self.w, self.channel, self.rng = w, channel, rng
        self.codes: collections.Counter[str] = collections.Counter()
        self.forbidden: list[str] = []
        _, self.registration = w.clients[0]

    def metadata(self, method: str) -> tuple[tuple[str, str], ...]:
        """The right token for `method` most of the time, so that most calls get past authentication."""
        right = self.w.tokens.enrollment_token if method == "Register" else self.registration.token
        wrong = self.rng.choice((self.w.tokens.enrollment_token, self.registration.token, "forged", ""))
        return (("authorization", f"Bearer {right if self.rng.random() < 0.85 else wrong}"),)

    async def fire(self, call: Call) -> None:
        try:
            await call()
            self.codes["OK"] += 1
        except grpc.aio.AioRpcError as error:
            self.codes[error.code().name] += 1
            if error.code() in FORBIDDEN:
                self.forbidden.append(f"{error.code().name}: {error.details()}"[:300])

    def raw(self, method: str, data: bytes) -> Call:
        path = f"/fedbus.v1.Federation/{method}"
        metadata = self.metadata(method)
        if method == "DownloadModel":

            async def stream() -> None:
                async for _ in self.channel.unary_stream(path)(data, metadata=metadata, timeout=10):
                    pass

            return stream
        if method == "UploadUpdate":

            async def upload() -> None:
                await self.channel.stream_unary(path)(iter([data, data[::-1]]), metadata=metadata, timeout=10)

            return upload

        async def unary() -> None:
            await self.channel.unary_unary(path)(data, metadata=metadata, timeout=10)

        return unary

    def random_bytes(self) -> Call:
        rng = self.rng
        data = rng.choice(
            (
                bytes(rng.randrange(256) for _ in range(rng.randrange(1, 64))),
                b"\xff" * rng.randrange(1, 16),
                b"\x0a\xff\xff\xff\xff\x0f",  # a length past the end
                b"\x08" + b"\xff" * 11,  # a varint that never ends
                b"\x0b" * 200,  # start-group tags nested deeper than the parser allows
            )
        )
        return self.raw(rng.choice(METHODS), data)

    def odd_fields(self) -> Call:
        rng, w = self.rng, self.w
        method = rng.choice(METHODS)
        if method == "Register":
            caps = pb.Capabilities(device=odd_text(rng), cores=rng.choice((0, -5, MAX_INT32)), hostname=odd_text(rng))
            caps.memory_bytes = odd_int(rng)
            message = pb.RegisterRequest(capabilities=caps, instance_name=odd_text(rng), client_secret=odd_text(rng))
        elif method == "DownloadModel":
            run_id = rng.choice((w.run_id, odd_text(rng)))
            message = pb.DownloadRequest(run_id=run_id, model_version=odd_int(rng), offset=odd_int(rng))
        elif method == "Decline":
            message = pb.DeclineRequest(
                run_id=rng.choice((w.run_id, odd_text(rng))), round=odd_int(rng), reason=odd_text(rng)
            )
        else:
            return self.odd_upload()
        return self.raw(method, message.SerializeToString())

    def odd_upload(self) -> Call:
        rng, w = self.rng, self.w
        payload = update_payload(w.model, seed=rng.randrange(100))
        header = pb.UpdateHeader(
            run_id=rng.choice((w.run_id, odd_text(rng))),
            round=rng.choice((w.round.round, odd_int(rng))),
            client_id=rng.choice((self.registration.client_id, odd_text(rng))),
            base_model_version=rng.choice((0, odd_int(rng))),
            num_samples=rng.choice((100, odd_int(rng))),
            codec=rng.choice(("fp32", "int9", odd_text(rng))),
            total_size=rng.choice((len(payload), odd_int(rng))),
            sha256=rng.choice((sha256_hex(payload), odd_text(rng), "Z" * 64)),
            raw_bytes=rng.choice((len(payload), odd_int(rng))),
        )
        if rng.random() < 0.5:
            header.epsilon = odd_float(rng)
        metrics = rng.choice(({"loss": odd_float(rng)}, {f"m{i}": 0.0 for i in range(rng.choice((33, 10_000)))}))
        header.metrics.update(metrics)
        first = pb.UpdateChunk(header=header, data=payload).SerializeToString()
        return self.raw("UploadUpdate", first)


def test_thousands_of_malformed_calls_get_real_statuses_and_no_tracebacks(
    postgres_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    async def scenario() -> Storm:
        log = await SqlEventLog.connect(postgres_url)
        try:
            async with world(clients=2, log=log) as w:
                options = [("grpc.max_send_message_length", 8 << 20)]
                channel = grpc.aio.insecure_channel(w.address, options=options)
                storm = Storm(w, channel, random.Random(SEED))
                try:
                    for start in range(0, CALLS, 50):
                        calls = [
                            storm.random_bytes() if storm.rng.random() < 0.4 else storm.odd_fields()
                            for _ in range(min(50, CALLS - start))
                        ]
                        await asyncio.gather(*(storm.fire(call) for call in calls))
                    # Honest clients are still served: the second one uploads and is accepted.
                    transport, registration = w.clients[1]
                    payload = update_payload(w.model)
                    assert (await transport.upload(w.header_for(registration, payload), payload)).accepted
                finally:
                    await channel.close()
                return storm
        finally:
            await log.close()

    with caplog.at_level(logging.WARNING):
        storm = asyncio.run(scenario())

    print(dict(storm.codes))
    assert sum(storm.codes.values()) == CALLS
    assert not storm.forbidden, (dict(storm.codes), storm.forbidden[:5])
    assert storm.codes["UNAUTHENTICATED"] < CALLS / 4, "most calls must reach the checks past authentication"
    tracebacks = [r for r in caplog.records if r.exc_info or "Traceback" in r.getMessage()]
    assert not tracebacks, [r.getMessage()[:200] for r in tracebacks[:5]]
