"""A QuorumReached delivered twice (concurrently, and again after the commit) yields one RoundAggregated.

Two AggregatorWorkers, each on its own PostgreSQL engine like two aggregator processes, with a stub
evaluator. A barrier in the evaluator holds both until each has read the log and found the round not yet
aggregated, so the inbox claim in the commit alone has to decide; a third delivery after the commit
must stop at the log check.
"""

from __future__ import annotations

import asyncio
import uuid

import numpy as np
import pytest

from contracts.compression import compress_update, parse_compression
from contracts.config import RunConfig
from contracts.envelope import Envelope
from contracts.events import Event, ModelInitialized, QuorumReached, RoundAggregated, RunCreated, UpdateAccepted
from contracts.tensor_codec import decode_tensors, sha256_hex
from contracts.tensors import TensorDict, TensorMapping
from persistence.sql_admin import ensure_database
from persistence.sql_event_log import SqlEventLog
from workers.aggregator.evaluator import PoolEvaluator
from workers.aggregator.worker import AggregatorWorker

pytestmark = [pytest.mark.integration, pytest.mark.deployed]
RUN = "run-redelivery"
BASE: TensorDict = {"w": np.ones((3, 2), dtype=np.float32), "b": np.zeros(2, dtype=np.float32)}
DELTAS = (
    {"w": np.full((3, 2), 0.4, np.float32), "b": np.full(2, 1.0, np.float32)},
    {"w": np.zeros((3, 2), np.float32), "b": np.full(2, -1.0, np.float32)},
)
SAMPLES = (300, 100)


class StubEvaluator(PoolEvaluator):
    """Fixed weights and metrics, no torch; `barrier` makes concurrent evaluations meet."""

    def __init__(self, barrier: asyncio.Barrier | None = None) -> None:
        super().__init__(None, None)
        self._barrier = barrier

    async def initial(self, task: str, seed: int) -> TensorDict:
        return {name: array.copy() for name, array in BASE.items()}

    async def evaluate(self, weights: TensorMapping, *, task: str, limit: int | None) -> dict[str, float]:
        if self._barrier is not None:
            await self._barrier.wait()
        return {"accuracy": 0.5, "loss": 1.0}


async def prepare(event_log: SqlEventLog) -> Envelope:
    """A run with its initial model and two accepted updates; returns round 1's QuorumReached as logged."""
    created = Envelope(event=RunCreated(run_id=RUN, config=RunConfig(clients=2, rounds=1).to_dict()))
    await event_log.append(f"run:{RUN}", [created], expected_version=0)
    await AggregatorWorker(event_log, StubEvaluator()).handle(created)
    accepted = []
    for i, (delta, samples) in enumerate(zip(DELTAS, SAMPLES, strict=True)):
        payload = compress_update(delta, parse_compression("fp32")).payload
        await event_log.put_blob(sha256_hex(payload), "update", payload)
        accepted.append(
            UpdateAccepted(
                run_id=RUN,
                round=1,
                update_id=uuid.uuid4().hex,
                client_id=f"c-{i}",
                num_samples=samples,
                digest=sha256_hex(payload),
                wire_bytes=len(payload),
                raw_bytes=32,
                ratio=1.0,
                epsilon=None,
                metrics={"loss": 1.0},
            )
        )
    base = next(
        r.envelope.event for r in await event_log.read_stream(f"run:{RUN}") if r.envelope.type == "ModelInitialized"
    )
    assert isinstance(base, ModelInitialized)
    quorum = QuorumReached(
        run_id=RUN, round=1, model_version=0, update_ids=tuple(a.update_id for a in accepted), partial=False,
        base_model_digest=base.model_digest, update_digests=tuple(a.digest for a in accepted),
        sample_counts=tuple(a.num_samples for a in accepted),
    )  # fmt: skip
    closing: list[Event] = [*accepted, quorum]
    await event_log.append(f"run:{RUN}", [Envelope(event=e) for e in closing])
    return (await event_log.read_stream(f"run:{RUN}"))[-1].envelope


async def scenario(database_url: str) -> tuple[list[RoundAggregated], int, TensorDict]:
    await ensure_database(database_url)
    logs = [await SqlEventLog.connect(database_url) for _ in range(3)]
    try:
        quorum = await prepare(logs[0])
        barrier = asyncio.Barrier(2)
        first, second = (AggregatorWorker(log, StubEvaluator(barrier)) for log in logs[:2])
        await asyncio.gather(first.handle(quorum), second.handle(quorum))
        late = AggregatorWorker(logs[2], StubEvaluator())
        await late.handle(quorum)
        events = [r.envelope.event for r in await logs[0].read_stream(f"run:{RUN}")]
        aggregated = [e for e in events if isinstance(e, RoundAggregated)]
        assert [e for e in events if isinstance(e, ModelInitialized)], "the initial model is missing"
        model = decode_tensors(await logs[0].get_blob(aggregated[0].model_digest)) if aggregated else {}
        return aggregated, first.aggregations + second.aggregations + late.aggregations, model
    finally:
        for log in logs:
            await log.close()


def test_a_quorum_handled_twice_at_once_and_again_later_is_aggregated_exactly_once(database_url: str) -> None:
    aggregated, aggregations, model = asyncio.run(asyncio.wait_for(scenario(database_url), timeout=60))

    assert len(aggregated) == 1 and aggregations == 1
    assert (aggregated[0].round, aggregated[0].model_version, aggregated[0].num_updates) == (1, 1, 2)
    weight = np.array(SAMPLES, dtype=np.float64) / sum(SAMPLES)
    for name, base in BASE.items():
        expected = base + weight[0] * DELTAS[0][name] + weight[1] * DELTAS[1][name]
        np.testing.assert_allclose(np.asarray(model[name], dtype=np.float64), expected, rtol=1e-6)
