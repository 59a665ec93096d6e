"""One contract for every EventLog: in-memory, SQLite and PostgreSQL must behave the same.

SQL-only parts (projections, read helpers, prune, migrations, driver error translation) follow.
"""

from __future__ import annotations

import asyncio
import hashlib
import sqlite3
import uuid
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import exc as sa_exc
from sqlalchemy import inspect

from contracts.envelope import Envelope, RecordedEvent
from contracts.errors import ConcurrencyConflict, NotFound, TransientError
from contracts.events import (
    EVENT_TYPES,
    ClientDeclined,
    ClientEvicted,
    ClientRegistered,
    Event,
    ModelInitialized,
    QuorumReached,
    RoundAggregated,
    RoundFailed,
    RoundStarted,
    RunCompleted,
    RunCreated,
    UpdateAccepted,
    UpdateRejected,
)
from persistence.errors import RetryPolicy, is_transient, retried, translated
from persistence.migrations import upgrade
from persistence.projections import PROJECTORS
from persistence.schema import events as events_table
from persistence.schema import metadata
from persistence.sql_event_log import SqlEventLog

SAMPLE_EVENTS: list[Event] = [
    RunCreated(run_id="r1", config={"rounds": 3, "lr": 0.05, "model": "mnist_cnn", "nested": {"a": [1, 2]}}),
    ModelInitialized(run_id="r1", model_version=0, model_digest="d0", num_parameters=26010),
    ClientRegistered(client_id="c1", capabilities={"cpu": 2}),
    ClientEvicted(client_id="c1", reason="bad updates"),
    RoundStarted(
        run_id="r1",
        round=1,
        attempt=1,
        model_version=0,
        model_digest="d0",
        selected=("c1", "c2"),
        deadline=1700000030.5,
        train={"epochs": 1, "batch_size": 32},
        sampling={"kind": "poisson", "rate": 0.25, "population": 8},
    ),
    UpdateAccepted(
        run_id="r1",
        round=1,
        update_id="u1",
        client_id="c1",
        num_samples=600,
        digest="du1",
        wire_bytes=1234,
        raw_bytes=104040,
        ratio=84.3,
        epsilon=0.75,
        metrics={"loss": 0.31},
        late=True,
    ),
    UpdateRejected(run_id="r1", round=1, client_id="c2", reason="non_finite", detail="NaN in conv1"),
    ClientDeclined(run_id="r1", round=1, client_id="c3", reason="privacy_budget"),
    QuorumReached(run_id="r1", round=1, model_version=0, update_ids=("u1", "u2"), partial=True),
    RoundAggregated(
        run_id="r1",
        round=1,
        model_version=1,
        model_digest="d1",
        num_updates=2,
        metrics={"accuracy": 0.91},
        duration_s=0.25,
    ),
    RoundFailed(run_id="r1", round=2, attempt=1, reason="below_min_updates"),
    RunCompleted(run_id="r1", reason="max_rounds", rounds=1, metrics={"accuracy": 0.91}),
]

FAST_RETRY = RetryPolicy(name="test", attempts=3, initial_wait_s=0.001, max_wait_s=0.01)


def new_stream() -> str:
    return f"run:{uuid.uuid4().hex}"


def created(run_id: str = "r") -> Envelope:
    return Envelope(event=RunCreated(run_id=run_id, config={}))


def envelopes_of(recorded: list[RecordedEvent]) -> list[Envelope]:
    return [r.envelope for r in recorded]


# --- every backend -------------------------------------------------------------------------------------


def test_sample_events_cover_every_registered_event_type() -> None:
    assert {type(e) for e in SAMPLE_EVENTS} == {cls for cls, _ in EVENT_TYPES.values()}


def test_every_event_type_round_trips_through_the_log(backend: Any, run: Any) -> None:
    stream = new_stream()
    sent = [
        Envelope(event=event, occurred_at=1700000000.0 + i / 8, traceparent=f"00-{i:032x}-{i:016x}-01")
        for i, event in enumerate(SAMPLE_EVENTS)
    ]

    async def scenario() -> list[RecordedEvent]:
        async with backend.opened() as log:
            await log.append(stream, sent)
            return list(await log.read_stream(stream))

    recorded = run(scenario())

    assert envelopes_of(recorded) == sent
    assert [r.version for r in recorded] == list(range(1, len(sent) + 1))
    assert {r.stream_id for r in recorded} == {stream}


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    config=st.dictionaries(
        st.text(st.characters(exclude_characters="\x00"), max_size=8),
        st.recursive(
            st.none()
            | st.booleans()
            | st.integers(-(2**53), 2**53)
            | st.floats(allow_nan=False, allow_infinity=False)
            | st.text(st.characters(exclude_characters="\x00"), max_size=12),
            lambda inner: st.lists(inner, max_size=3),
            max_leaves=6,
        ),
        max_size=5,
    )
)
def test_json_payloads_round_trip_exactly(backend: Any, run: Any, config: dict[str, Any]) -> None:
    stream = new_stream()
    sent = Envelope(event=RunCreated(run_id="r", config=config))

    async def scenario() -> list[RecordedEvent]:
        async with backend.opened() as log:
            await log.append(stream, [sent])
            return list(await log.read_stream(stream))

    assert envelopes_of(run(scenario())) == [sent]


def test_append_checks_the_expected_version(backend: Any, run: Any) -> None:
    stream = new_stream()

    async def scenario() -> None:
        async with backend.opened() as log:
            assert await log.append(stream, [created(), created()], expected_version=0) == 2
            with pytest.raises(ConcurrencyConflict):
                await log.append(stream, [created()], expected_version=1)
            assert await log.append(stream, [created()], expected_version=2) == 3
            assert await log.append(stream, [created()]) == 4
            assert await log.append(stream, [], expected_version=4) == 4
            tail = await log.read_stream(stream, after_version=2)
            assert [r.version for r in tail] == [3, 4]

    run(scenario())


def test_an_event_id_can_be_appended_only_once(backend: Any, run: Any) -> None:
    first = created()

    async def scenario() -> None:
        async with backend.opened() as log:
            await log.append(new_stream(), [first])
            with pytest.raises(ConcurrencyConflict):
                await log.append(new_stream(), [first])

    run(scenario())


def test_concurrent_appends_at_the_same_version_let_exactly_one_win(backend: Any, run: Any) -> None:
    stream = new_stream()

    async def scenario() -> tuple[list[Any], list[RecordedEvent]]:
        async with backend.opened() as one, backend.opened() as two:
            await one.append(stream, [created()])
            outcomes = await asyncio.gather(
                one.append(stream, [created("a")], expected_version=1),
                two.append(stream, [created("b")], expected_version=1),
                return_exceptions=True,
            )
            return outcomes, list(await one.read_stream(stream))

    outcomes, recorded = run(scenario())

    assert sorted(outcomes, key=lambda o: isinstance(o, ConcurrencyConflict))[0] == 2
    assert sum(isinstance(o, ConcurrencyConflict) for o in outcomes) == 1
    assert [r.version for r in recorded] == [1, 2]


def test_read_all_returns_events_in_position_order_after_a_position(backend: Any, run: Any) -> None:
    streams = [new_stream(), new_stream()]

    async def scenario() -> tuple[list[RecordedEvent], list[RecordedEvent]]:
        async with backend.opened() as log:
            for i in range(3):
                await log.append(streams[i % 2], [created(f"r{i}")])
            everything = await log.read_all()
            return everything, await log.read_all(after_position=everything[0].position, limit=1)

    everything, page = run(scenario())

    positions = [r.position for r in everything]
    assert positions == sorted(positions) and len(set(positions)) == 3
    assert [e.event.run_id for e in envelopes_of(everything)] == ["r0", "r1", "r2"]
    assert page == everything[1:2]


def test_a_tailer_never_skips_events_committed_by_concurrent_appenders(backend: Any, run: Any) -> None:
    writers, appends_each = 4, 8

    async def writer(log: Any, index: int) -> None:
        stream = new_stream()
        for i in range(appends_each):
            await log.append(stream, [created(f"w{index}-{i}a"), created(f"w{index}-{i}b")])
            await asyncio.sleep(0)

    async def tail(log: Any, writing: asyncio.Future[Any]) -> list[int]:
        seen: list[int] = []
        while True:
            done = writing.done()
            page = await log.read_all(after_position=seen[-1] if seen else 0, limit=5)
            seen.extend(r.position for r in page)
            if done and not page:
                return seen
            await asyncio.sleep(0)

    async def scenario() -> tuple[list[int], list[int]]:
        async with backend.opened() as reader, backend.opened() as log:
            writing = asyncio.gather(*(writer(log, i) for i in range(writers)))
            tailed = await tail(reader, writing)
            await writing
            return tailed, [r.position for r in await reader.read_all(limit=10_000)]

    tailed, final = run(scenario())

    assert tailed == final
    assert len(final) == writers * appends_each * 2


def test_unpublished_lists_the_outbox_until_marked_published(backend: Any, run: Any) -> None:
    async def scenario() -> tuple[list[int], list[int], list[int], list[int]]:
        async with backend.opened() as log:
            await log.append(new_stream(), [created("a"), created("b")])
            await log.append(new_stream(), [created("c")])
            before = [r.position for r in await log.unpublished()]
            limited = [r.position for r in await log.unpublished(limit=2)]
            await log.mark_published(before[:2])
            await log.mark_published(before[:2])  # a relay that crashed before its ack marks again
            after = [r.position for r in await log.unpublished()]
            await log.mark_published([])
            return before, limited, after, [r.position for r in await log.read_all()]

    before, limited, after, everything = run(scenario())

    assert before == everything and len(before) == 3
    assert limited == before[:2]
    assert after == before[2:]


def test_append_listeners_hear_of_committed_appends_only(backend: Any, run: Any) -> None:
    stream = new_stream()

    class Crash(Exception):
        pass

    async def scenario() -> tuple[list[str], list[str]]:
        heard: list[str] = []
        async with backend.opened() as log:
            remove = log.on_append(lambda: heard.append("first"))
            log.on_append(lambda: heard.append("second"))
            await log.append(stream, [created()])
            async with log.transaction() as uow:  # a claim and a blob: nothing appended
                await uow.claim("aggregator", "m1")
                await uow.put_blob("b1", "model", b"weights")
            await log.put_blob("b2", "model", b"more")
            with pytest.raises(Crash):
                async with log.transaction() as uow:
                    await uow.append(stream, [created()])
                    raise Crash
            with pytest.raises(ConcurrencyConflict):
                await log.append(stream, [created()], expected_version=0)
            first = list(heard)
            remove()
            remove()  # a second removal does nothing
            async with log.transaction() as uow:
                await uow.append(stream, [created()])
            return first, heard[len(first) :]

    committed, after_removal = run(scenario())

    assert committed == ["first", "second"]
    assert after_removal == ["second"]


def test_a_transaction_commits_claim_events_and_blobs_together(backend: Any, run: Any) -> None:
    stream = new_stream()

    async def scenario() -> None:
        async with backend.opened() as log:
            async with log.transaction() as uow:
                assert await uow.claim("aggregator", "m1") is True
                assert await uow.append(stream, [created()], expected_version=0) == 1
                assert await uow.append(stream, [created()]) == 2
                await uow.put_blob("b1", "model", b"weights")
            assert [r.version for r in await log.read_stream(stream)] == [1, 2]
            assert await log.get_blob("b1") == b"weights"
            async with log.transaction() as uow:
                assert await uow.claim("aggregator", "m1") is False

    run(scenario())


def test_a_failed_transaction_leaves_no_event_claim_or_blob(backend: Any, run: Any) -> None:
    stream = new_stream()

    class Crash(Exception):
        pass

    async def scenario() -> None:
        async with backend.opened() as log:
            with pytest.raises(Crash):
                async with log.transaction() as uow:
                    await uow.claim("aggregator", "m1")
                    await uow.append(stream, [created()])
                    await uow.put_blob("b1", "model", b"weights")
                    raise Crash
            assert await log.read_stream(stream) == []
            assert await log.has_blob("b1") is False
            assert await log.unpublished() == []
            async with log.transaction() as uow:
                assert await uow.claim("aggregator", "m1") is True

    run(scenario())


def test_a_conflict_inside_a_transaction_releases_the_inbox_claim(backend: Any, run: Any) -> None:
    stream = new_stream()

    async def scenario() -> None:
        async with backend.opened() as log:
            await log.append(stream, [created()])
            with pytest.raises(ConcurrencyConflict):
                async with log.transaction() as uow:
                    await uow.claim("coordinator", "m9")
                    await uow.append(stream, [created()], expected_version=0)
            async with log.transaction() as uow:
                assert await uow.claim("coordinator", "m9") is True

    run(scenario())


def test_claiming_a_message_twice_is_refused_per_consumer(backend: Any, run: Any) -> None:
    async def scenario() -> list[bool]:
        async with backend.opened() as log:
            claims = []
            for consumer in ("aggregator", "aggregator", "api"):
                async with log.transaction() as uow:
                    claims.append(await uow.claim(consumer, "m1"))
            async with log.transaction() as uow:
                claims.append(await uow.claim("api", "m2"))
                claims.append(await uow.claim("api", "m2"))
            return claims

    assert run(scenario()) == [True, False, True, True, False]


def test_blobs_are_content_addressed_and_idempotent(backend: Any, run: Any) -> None:
    data = b"\x00\x01model bytes" * 100
    digest = hashlib.sha256(data).hexdigest()

    async def scenario() -> None:
        async with backend.opened() as log:
            assert await log.has_blob(digest) is False
            await log.put_blob(digest, "model", data)
            await log.put_blob(digest, "model", data)
            assert await log.has_blob(digest) is True
            assert await log.get_blob(digest) == data
            with pytest.raises(NotFound):
                await log.get_blob("0" * 64)

    run(scenario())


# --- SQL backends: projections and read helpers --------------------------------------------------------


def test_every_event_type_has_a_projector() -> None:
    assert set(PROJECTORS) == {cls for cls, _ in EVENT_TYPES.values()}


def scripted_run(run_id: str) -> list[tuple[str, Event]]:
    """A one-round run as the coordinator and aggregator would record it, with the stream of each event."""
    run_stream = f"run:{run_id}"
    update = dict(run_id=run_id, round=1, wire_bytes=100, raw_bytes=400, ratio=4.0, metrics={"loss": 0.5})
    return [
        (run_stream, RunCreated(run_id=run_id, config={"rounds": 1})),
        ("client:c1", ClientRegistered(client_id="c1", capabilities={"cpu": 1})),
        ("client:c2", ClientRegistered(client_id="c2")),
        (run_stream, ModelInitialized(run_id=run_id, model_version=0, model_digest="m0", num_parameters=10)),
        (
            run_stream,
            RoundStarted(
                run_id=run_id,
                round=1,
                attempt=1,
                model_version=0,
                model_digest="m0",
                selected=("c1", "c2"),
                deadline=2000.0,
                train={"epochs": 1},
            ),
        ),
        (
            run_stream,
            UpdateAccepted(update_id="u1", client_id="c1", num_samples=30, digest="d1", epsilon=0.5, **update),
        ),
        (
            run_stream,
            UpdateAccepted(update_id="u2", client_id="c2", num_samples=10, digest="d2", epsilon=None, **update),
        ),
        (
            run_stream,
            QuorumReached(run_id=run_id, round=1, model_version=0, update_ids=("u1", "u2"), partial=False),
        ),
        (
            run_stream,
            RoundAggregated(
                run_id=run_id,
                round=1,
                model_version=1,
                model_digest="m1",
                num_updates=2,
                metrics={"accuracy": 0.9},
                duration_s=1.5,
            ),
        ),
        (run_stream, RunCompleted(run_id=run_id, reason="max_rounds", rounds=1, metrics={"accuracy": 0.9})),
    ]


async def record(log: Any, script: list[tuple[str, Event]], start: float = 1000.0) -> None:
    for i, (stream, event) in enumerate(script):
        await log.append(stream, [Envelope(event=event, occurred_at=start + i)])


def test_projections_follow_a_scripted_run(sql_backend: Any, run: Any) -> None:
    async def scenario() -> dict[str, Any]:
        async with sql_backend.opened() as log:
            await record(log, scripted_run("r1"))
            return {
                "runs": await log.reads.runs(),
                "run": await log.reads.run("r1"),
                "rounds": await log.reads.rounds("r1"),
                "clients": await log.reads.clients(),
                "updates": await log.reads.updates("r1", 1),
            }

    seen = run(scenario())

    assert seen["runs"] == [seen["run"]]
    assert seen["run"] == {
        "run_id": "r1",
        "config": {"rounds": 1},
        "status": "completed",
        "reason": "max_rounds",
        "rounds_completed": 1,
        "model_version": 1,
        "model_digest": "m1",
        "metrics": {"accuracy": 0.9},
        "created_at": 1000.0,
        "updated_at": 1009.0,
    }
    [round_] = seen["rounds"]
    assert round_["status"] == "aggregated" and round_["attempt"] == 1
    assert round_["selected"] == ["c1", "c2"] and round_["update_ids"] == ["u1", "u2"]
    assert (round_["started_at"], round_["quorum_at"], round_["aggregated_at"]) == (1004.0, 1007.0, 1008.0)
    assert round_["partial"] is False
    assert (round_["new_model_version"], round_["new_model_digest"]) == (1, "m1")
    assert round_["metrics"] == {"accuracy": 0.9} and round_["duration_s"] == 1.5
    by_id = {c["client_id"]: c for c in seen["clients"]}
    assert [c["client_id"] for c in seen["clients"]] == ["c1", "c2"]
    assert (by_id["c1"]["rounds_joined"], by_id["c1"]["epsilon"], by_id["c1"]["last_seen"]) == (
        1,
        0.5,
        1005.0,
    )
    assert (by_id["c2"]["rounds_joined"], by_id["c2"]["epsilon"], by_id["c2"]["evicted"]) == (1, None, False)
    assert by_id["c1"]["capabilities"] == {"cpu": 1} and by_id["c1"]["registered_at"] == 1001.0
    assert [(u["update_id"], u["client_id"], u["num_samples"], u["digest"]) for u in seen["updates"]] == [
        ("u1", "c1", 30, "d1"),
        ("u2", "c2", 10, "d2"),
    ]
    assert seen["updates"][0]["late"] is False and seen["updates"][0]["metrics"] == {"loss": 0.5}


def test_a_retried_round_replaces_its_row_and_failures_and_refusals_are_recorded(sql_backend: Any, run: Any) -> None:
    script = scripted_run("r2")[:5]
    started = script[4][1]
    assert isinstance(started, RoundStarted)

    async def scenario() -> tuple[list[Any], list[Any], Any]:
        async with sql_backend.opened() as log:
            await record(log, script)
            await record(
                log,
                [
                    ("run:r2", UpdateRejected(run_id="r2", round=1, client_id="c1", reason="nan")),
                    ("run:r2", ClientDeclined(run_id="r2", round=1, client_id="c2", reason="budget")),
                    ("run:r2", RoundFailed(run_id="r2", round=1, attempt=1, reason="below_min_updates")),
                ],
                start=1100.0,
            )
            failed = await log.reads.rounds("r2")
            retry = RoundStarted(**{**event_fields(started), "attempt": 2, "selected": ("c1",)})
            await record(log, [("run:r2", retry), ("client:c2", ClientEvicted(client_id="c2", reason="x"))], 1200.0)
            return failed, await log.reads.rounds("r2"), await log.reads.clients()

    failed, retried_rounds, clients = run(scenario())

    assert [(r["status"], r["attempt"], r["failure_reason"]) for r in failed] == [("failed", 1, "below_min_updates")]
    assert [(r["status"], r["attempt"], r["selected"], r["failure_reason"]) for r in retried_rounds] == [
        ("open", 2, ["c1"], None)
    ]
    assert [(c["client_id"], c["evicted"], c["evicted_reason"]) for c in clients] == [
        ("c1", False, None),
        ("c2", True, "x"),
    ]


def event_fields(event: Event) -> dict[str, Any]:
    return {name: getattr(event, name) for name in event.__dataclass_fields__}


def test_run_of_an_unknown_id_is_not_found(sql_backend: Any, run: Any) -> None:
    async def scenario() -> None:
        async with sql_backend.opened() as log:
            with pytest.raises(NotFound):
                await log.reads.run("nope")

    run(scenario())


def test_prune_keeps_the_blobs_of_the_last_rounds_and_the_current_model(sql_backend: Any, run: Any) -> None:
    def round_events(n: int) -> list[tuple[str, Event]]:
        common = dict(run_id="r", round=n)
        accepted = dict(wire_bytes=1, raw_bytes=1, ratio=1.0, epsilon=None, metrics={})
        return [
            (
                "run:r",
                RoundStarted(
                    **common,
                    attempt=1,
                    model_version=n - 1,
                    model_digest=f"m{n - 1}",
                    selected=("c",),
                    deadline=0.0,
                    train={},
                ),
            ),
            (
                "run:r",
                UpdateAccepted(**common, update_id=f"u{n}", client_id="c", num_samples=1, digest=f"d{n}", **accepted),
            ),
            (
                "run:r",
                RoundAggregated(
                    **common,
                    model_version=n,
                    model_digest=f"m{n}",
                    num_updates=1,
                    metrics={},
                    duration_s=0.0,
                ),
            ),
        ]

    async def scenario() -> tuple[int, set[str]]:
        async with sql_backend.opened() as log:
            await record(log, [("run:r", RunCreated(run_id="r", config={}))])
            for n in (1, 2, 3):
                await record(log, round_events(n))
            names = ["m0", "m1", "m2", "m3", "d1", "d2", "d3", "stray"]
            for name in names:
                await log.put_blob(name, "model" if name.startswith("m") else "update", name.encode())
            deleted = await log.prune(keep_rounds=1)
            return deleted, {name for name in names if await log.has_blob(name)}

    deleted, kept = run(scenario())

    # Round 3 (the last) started from m2, received d3 and produced m3; "stray" is referenced by nothing.
    assert kept == {"m2", "m3", "d3", "stray"}
    assert deleted == 4


# --- SQL backends: driver error translation and retries ------------------------------------------------


def test_a_duplicate_stream_version_from_the_driver_becomes_a_concurrency_conflict(sql_backend: Any, run: Any) -> None:
    row = dict(event_id="e2", stream_id="run:x", version=1, type="RunCreated", payload={}, schema_version=1)

    async def scenario() -> None:
        async with sql_backend.opened() as log:
            await log.append("run:x", [created()])
            with pytest.raises(ConcurrencyConflict), translated("raw insert"):
                async with log.engine.begin() as conn:
                    await conn.execute(events_table.insert().values(**row, occurred_at=0.0))

    run(scenario())


def test_an_unreachable_database_raises_transient_error_after_retries(run: Any) -> None:
    async def scenario() -> None:
        log = await SqlEventLog.connect("postgresql://root@127.0.0.1:1/none", create=False, retry=FAST_RETRY)
        try:
            with pytest.raises(TransientError):
                await log.read_all()
            with pytest.raises(TransientError):
                await log.append("run:x", [created()])
        finally:
            await log.close()

    run(scenario())


def test_errors_that_are_not_transient_are_neither_retried_nor_disguised(tmp_path: Any, run: Any) -> None:
    async def scenario() -> None:
        log = await SqlEventLog.connect(f"sqlite:///{tmp_path / 'empty.db'}", create=False, retry=FAST_RETRY)
        try:
            with pytest.raises(sa_exc.OperationalError) as raised:
                await log.read_all()  # no such table: a bug, not weather
            assert not isinstance(raised.value, TransientError)
        finally:
            await log.close()

    run(scenario())


@pytest.mark.parametrize(
    ("error", "transient"),
    [
        (sa_exc.DBAPIError("SELECT 1", {}, Exception("gone"), connection_invalidated=True), True),
        (sa_exc.OperationalError("BEGIN", {}, sqlite3.OperationalError("database is locked")), True),
        (sa_exc.OperationalError("SELECT", {}, sqlite3.OperationalError("no such table: events")), False),
        (ConnectionRefusedError(111, "refused"), True),
        (sa_exc.IntegrityError("INSERT", {}, sqlite3.IntegrityError("NOT NULL constraint failed")), False),
        (ValueError("bad"), False),
    ],
)
def test_driver_errors_are_classified_as_transient_or_not(error: BaseException, transient: bool) -> None:
    assert is_transient(error) is transient


def test_the_retry_policy_retries_only_transient_errors(run: Any) -> None:
    calls = {"flaky": 0, "conflict": 0}

    async def flaky() -> str:
        calls["flaky"] += 1
        if calls["flaky"] < 3:
            raise TransientError("connection reset")
        return "ok"

    async def conflict() -> str:
        calls["conflict"] += 1
        raise ConcurrencyConflict("taken")

    async def scenario() -> str:
        with pytest.raises(ConcurrencyConflict):
            await retried(FAST_RETRY, conflict)
        return await retried(FAST_RETRY, flaky)

    assert run(scenario()) == "ok"
    assert calls == {"flaky": 3, "conflict": 1}


# --- migrations ----------------------------------------------------------------------------------------


async def migrated_schema(url: str) -> tuple[dict[str, list[str]], list[Any]]:
    """Upgrade `url` twice (the second is a no-op), then describe its tables and diff them with schema.py."""
    from alembic.autogenerate import compare_metadata
    from alembic.migration import MigrationContext

    await upgrade(url)
    await upgrade(url)
    log = await SqlEventLog.connect(url, create=False)
    try:
        await log.append("run:m", [created()])  # the migrated schema works
        async with log.engine.connect() as conn:

            def describe(sync_conn: Any) -> tuple[dict[str, list[str]], list[Any]]:
                inspector = inspect(sync_conn)
                tables = {
                    name: sorted(c["name"] for c in inspector.get_columns(name))
                    for name in inspector.get_table_names()
                    if name != "alembic_version"
                }
                return tables, compare_metadata(MigrationContext.configure(sync_conn), metadata)

            return await conn.run_sync(describe)
    finally:
        await log.close()


def expected_tables() -> dict[str, list[str]]:
    return {table.name: sorted(c.name for c in table.columns) for table in metadata.sorted_tables}


@pytest.mark.integration
def test_migrations_build_the_schema_of_schema_py_on_postgresql(empty_postgres_url: str, run: Any) -> None:
    tables, differences = run(migrated_schema(empty_postgres_url))

    assert tables == expected_tables()
    assert differences == []


def test_migrations_build_the_schema_of_schema_py_on_sqlite(tmp_path: Any, run: Any) -> None:
    tables, differences = run(migrated_schema(f"sqlite:///{tmp_path / 'fedbus.db'}"))

    assert tables == expected_tables()
    assert differences == []
