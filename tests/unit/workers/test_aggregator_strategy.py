"""The aggregator applies the run's strategy and keeps its state as a blob named by RoundAggregated, which the
coordinator's fold hands to the next QuorumReached: any aggregator, or a restarted one, takes it up."""

from __future__ import annotations

import asyncio
import hashlib
from typing import cast

import numpy as np

from contracts.compression import compress_update, parse_compression
from contracts.config import RunConfig
from contracts.envelope import Envelope
from contracts.events import ModelInitialized, QuorumReached, RoundAggregated, RunCreated
from contracts.run_state import state_from_created
from contracts.strategy import StrategyConfig
from contracts.tensor_codec import decode_tensors, encode_with_manifest
from contracts.uploads import UploadHeader
from persistence.in_memory_event_log import InMemoryEventLog
from services.coordinator import decide
from services.coordinator.decide import ClientPool
from tests.unit.test_robust_aggregation import NoEvaluation
from workers.aggregator.evaluator import PoolEvaluator
from workers.aggregator.worker import AggregatorWorker
from workers.learning.strategies import STEP, server_step

STRATEGY = StrategyConfig(name="fedadam", options={"server_lr": 0.1, "tau": 1e-3})
BASE = {"w": np.array([1.0, 1.0], np.float32)}
UPDATE = {"w": np.array([0.2, -0.4], np.float32)}


async def aggregate(log: InMemoryEventLog, round_: int, base_digest: str, server_state: str) -> RoundAggregated:
    payload = compress_update(UPDATE, parse_compression("fp32")).payload
    digest = hashlib.sha256(payload).hexdigest()
    await log.put_blob(digest, "update", payload)
    quorum = QuorumReached(
        run_id="r", round=round_, model_version=round_ - 1, update_ids=(f"u{round_}",), partial=False,
        base_model_digest=base_digest, update_digests=(digest,), sample_counts=(10,), server_state=server_state,
    )  # fmt: skip
    worker = AggregatorWorker(log, cast(PoolEvaluator, NoEvaluation()))
    await worker.handle(Envelope(event=quorum))
    done = [r.envelope.event for r in await log.read_stream("run:r") if isinstance(r.envelope.event, RoundAggregated)]
    return done[-1]


def test_the_strategy_state_is_kept_as_a_blob_and_taken_up_by_the_next_round() -> None:
    async def scenario() -> tuple[RoundAggregated, RoundAggregated, InMemoryEventLog]:
        log = InMemoryEventLog()
        model, manifest = encode_with_manifest(BASE)
        await log.put_blob(manifest.digest, "model", model)
        config = RunConfig(strategy=STRATEGY).to_dict()
        init = ModelInitialized(run_id="r", model_version=0, model_digest=manifest.digest, num_parameters=2)
        await log.append("run:r", [Envelope(event=RunCreated(run_id="r", config=config)), Envelope(event=init)])
        first = await aggregate(log, 1, manifest.digest, "")
        second = await aggregate(log, 2, first.model_digest, first.server_state)  # e.g. another aggregator
        return first, second, log

    first, second, log = asyncio.run(scenario())

    state1, state2 = (decode_tensors(asyncio.run(log.get_blob(e.server_state))) for e in (first, second))
    assert state1[STEP].tolist() == [1.0] and state2[STEP].tolist() == [2.0]
    x1, expected1 = server_step(STRATEGY, BASE, UPDATE, {})
    x2, expected2 = server_step(STRATEGY, x1, UPDATE, expected1)
    np.testing.assert_array_equal(decode_tensors(asyncio.run(log.get_blob(second.model_digest)))["w"], x2["w"])
    np.testing.assert_array_equal(state2["v.w"], expected2["v.w"])


def test_the_coordinator_hands_the_latest_state_to_the_next_quorum() -> None:
    run = state_from_created(RunCreated(run_id="r", config=RunConfig(clients=1, strategy=STRATEGY).to_dict()))
    pool = ClientPool(active=frozenset({"c"}))
    run.apply(ModelInitialized(run_id="r", model_version=0, model_digest="m0", num_parameters=2), 0.0)
    [first] = decide.due(run, pool, now=0.0)
    run.apply(first, 0.0)
    aggregated = RoundAggregated(
        run_id="r", round=1, model_version=1, model_digest="m1", num_updates=1, metrics={}, duration_s=0.1,
        server_state="s1",
    )  # fmt: skip
    run.apply(aggregated, 1.0)
    [second] = decide.due(run, pool, now=1.0)
    run.apply(second, 1.0)

    header = UploadHeader(
        run_id="r", round=2, client_id="c", base_model_version=1, num_samples=10, codec="int8", total_size=1,
        sha256="a" * 64, raw_bytes=4,
    )  # fmt: skip
    accepted = decide.accept(run, header, update_id="u", wire_bytes=1, pool=pool, now=2.0)

    quorum = next(e for e in accepted if isinstance(e, QuorumReached))
    assert run.server_state == "s1" and quorum.server_state == "s1"


def test_fedbuff_scales_each_update_by_its_staleness_weight_before_the_weighted_mean() -> None:
    # Two updates, 10 and 30 samples, trained 0 and 3 versions behind the base (s = 1 and 1/2):
    # x = [1, 1] + (10 [0.2, -0.4] + 30 * 0.5 [0.1, 0.1]) / 40 = [1.0875, 0.9375].
    async def scenario() -> RoundAggregated:
        log = InMemoryEventLog()
        model, manifest = encode_with_manifest(BASE)
        await log.put_blob(manifest.digest, "model", model)
        config = RunConfig(strategy=StrategyConfig(name="fedbuff", options={"buffer_size": 2})).to_dict()
        init = ModelInitialized(run_id="r", model_version=0, model_digest=manifest.digest, num_parameters=2)
        await log.append("run:r", [Envelope(event=RunCreated(run_id="r", config=config)), Envelope(event=init)])
        digests = []
        for update in ({"w": np.array([0.2, -0.4], np.float32)}, {"w": np.array([0.1, 0.1], np.float32)}):
            payload = compress_update(update, parse_compression("fp32")).payload
            digests.append(hashlib.sha256(payload).hexdigest())
            await log.put_blob(digests[-1], "update", payload)
        quorum = QuorumReached(
            run_id="r", round=4, model_version=3, update_ids=("u1", "u2"), partial=False,
            base_model_digest=manifest.digest, update_digests=tuple(digests), sample_counts=(10, 30),
            staleness=(0, 3),
        )  # fmt: skip
        await AggregatorWorker(log, cast(PoolEvaluator, NoEvaluation())).handle(Envelope(event=quorum))
        events = [r.envelope.event for r in await log.read_stream("run:r")]
        done = [e for e in events if isinstance(e, RoundAggregated)]
        assert len(done) == 1, events
        weights = decode_tensors(await log.get_blob(done[0].model_digest))
        np.testing.assert_allclose(weights["w"], [1.0875, 0.9375], rtol=1e-6)
        return done[0]

    assert asyncio.run(scenario()).model_version == 4
