"""The aggregator with user-level DP on: the noised, clipped mean feeds the strategy's server step, the clip
norm and the round count persist in the state blob beside the strategy's own, and the user-level epsilon
(Opacus', amplified only for a whole first-attempt Poisson sample) is in RoundAggregated.metrics."""

from __future__ import annotations

import asyncio
import hashlib
import math
from typing import Any, cast

import numpy as np
import pytest
from opacus.accountants import RDPAccountant

from contracts.compression import compress_update, parse_compression
from contracts.config import PrivacyConfig, RunConfig
from contracts.envelope import Envelope
from contracts.events import Event, ModelInitialized, QuorumReached, RoundAggregated, RunCompleted, RunCreated
from contracts.strategy import StrategyConfig
from contracts.tensor_codec import decode_tensors, encode_with_manifest
from contracts.user_privacy import UserPrivacyConfig
from persistence.in_memory_event_log import InMemoryEventLog
from tests.unit.test_robust_aggregation import NoEvaluation
from workers.aggregator.evaluator import PoolEvaluator
from workers.aggregator.worker import AggregatorWorker
from workers.learning.user_privacy import CLIP_NORM, ROUNDS, UNAMPLIFIED_SINCE

BASE = {"w": np.array([1.0, 1.0], np.float32)}
BIG, SMALL = [0.3, 0.4], [0.03, 0.04]  # norms 0.5 (clipped to 0.1) and 0.05 (within it)
SAMPLING = {"kind": "poisson", "rate": 0.5, "population": 4}  # expected cohort q N = 2
Z, C0, SIGMA_B = 0.5, 0.1, 1.0


def config(**user: Any) -> RunConfig:
    dp = UserPrivacyConfig(
        enabled=True, noise_multiplier=Z, clip_norm=C0, clip_count_stddev=SIGMA_B, sample_rate=0.5, **user
    )
    strategy = StrategyConfig(name="fedavgm", options={"server_lr": 1.0, "momentum": 0.9})
    return RunConfig(clients=4, privacy=PrivacyConfig(enabled=False), user_privacy=dp, strategy=strategy)


def opacus_epsilon(rate: float, steps: int) -> float:
    accountant = RDPAccountant()
    accountant.history = [(Z, rate, steps)]
    return float(accountant.get_epsilon(1e-5))


class World:
    def __init__(self, cfg: RunConfig) -> None:
        self.log = InMemoryEventLog()
        self.config = cfg
        self.base_digest = ""

    async def created(self) -> None:
        model, manifest = encode_with_manifest(BASE)
        await self.log.put_blob(manifest.digest, "model", model)
        self.base_digest = manifest.digest
        init = ModelInitialized(run_id="r", model_version=0, model_digest=manifest.digest, num_parameters=2)
        created = RunCreated(run_id="r", config=self.config.to_dict())
        await self.log.append("run:r", [Envelope(event=created), Envelope(event=init)])

    async def quorum(self, round_: int, updates: list[list[float]], *, state: str = "", **fields: Any) -> list[Event]:
        digests = []
        for values in updates:
            payload = compress_update({"w": np.array(values, np.float32)}, parse_compression("fp32")).payload
            digests.append(hashlib.sha256(payload).hexdigest())
            await self.log.put_blob(digests[-1], "update", payload)
        quorum = QuorumReached(
            run_id="r", round=round_, model_version=round_ - 1, update_ids=tuple(f"u{i}" for i in range(len(digests))),
            partial=fields.pop("partial", False), base_model_digest=self.base_digest, update_digests=tuple(digests),
            sample_counts=tuple(10 for _ in digests), server_state=state, sampling=fields.pop("sampling", SAMPLING),
            **fields,
        )  # fmt: skip
        worker = AggregatorWorker(self.log, cast(PoolEvaluator, NoEvaluation()), rng=np.random.default_rng(round_))
        await worker.handle(Envelope(event=quorum))
        return [r.envelope.event for r in await self.log.read_stream("run:r")]

    def blob(self, digest: str) -> dict[str, np.ndarray]:
        return decode_tensors(asyncio.run(self.log.get_blob(digest)))


def aggregated(events: list[Event]) -> list[RoundAggregated]:
    return [e for e in events if isinstance(e, RoundAggregated)]


def test_two_rounds_add_the_noised_clipped_mean_and_carry_the_adaptive_clip_norm() -> None:
    world = World(config())

    async def scenario() -> list[RoundAggregated]:
        await world.created()
        first = aggregated(await world.quorum(1, [BIG, SMALL]))[-1]
        return aggregated(await world.quorum(2, [BIG, SMALL], state=first.server_state))

    first, second = asyncio.run(scenario())

    # Round 1 by hand, drawing from the generator the worker was given in the same order: the sum's noise, then
    # the count's. z_delta = (z^-2 - (2 sigma_b)^-2)^-1/2.
    rng, z_delta = np.random.default_rng(1), (Z**-2 - (2 * SIGMA_B) ** -2) ** -0.5
    clipped_sum = np.array([0.06, 0.08]) + np.array(SMALL)
    mean = (clipped_sum + rng.normal(0.0, z_delta * C0, size=2)) / 2.0
    fraction = (1 + rng.normal(0.0, SIGMA_B)) / 2.0
    c1 = C0 * math.exp(-0.2 * (fraction - 0.5))
    np.testing.assert_allclose(world.blob(first.model_digest)["w"], BASE["w"] + mean, rtol=1e-5)  # fedavgm: m = mean
    assert first.metrics["user_clip_norm"] == C0 and first.metrics["user_next_clip_norm"] == pytest.approx(c1)
    assert first.metrics["user_unclipped_fraction"] == pytest.approx(fraction)
    assert second.metrics["user_clip_norm"] == pytest.approx(c1)  # taken up from the blob, not from memory

    state1, state2 = world.blob(first.server_state), world.blob(second.server_state)
    assert set(state1) == {"m.w", CLIP_NORM, ROUNDS, UNAMPLIFIED_SINCE}  # the server optimizer's state too
    np.testing.assert_allclose(state1["m.w"], mean, rtol=1e-5)
    assert state1[ROUNDS].tolist() == [1] and state2[ROUNDS].tolist() == [2]

    assert first.metrics["user_epsilon"] == pytest.approx(opacus_epsilon(0.5, 1), rel=1e-6)
    assert second.metrics["user_epsilon"] == pytest.approx(opacus_epsilon(0.5, 2), rel=1e-6)
    assert second.metrics["user_epsilon_next"] == pytest.approx(opacus_epsilon(0.5, 3), rel=1e-6)
    assert first.metrics["user_epsilon_amplified"] is True and second.metrics["user_cohort"] == 2


def test_a_round_missing_sampled_clients_reports_the_unamplified_epsilon_from_then_on() -> None:
    world = World(config())

    async def scenario() -> list[RoundAggregated]:
        await world.created()
        first = aggregated(await world.quorum(1, [BIG], partial=True))[-1]
        return aggregated(await world.quorum(2, [BIG, SMALL], state=first.server_state))

    first, second = asyncio.run(scenario())

    assert first.metrics["user_epsilon"] == pytest.approx(opacus_epsilon(1.0, 1), rel=1e-6)
    assert first.metrics["user_epsilon_amplified"] is False
    assert "round 1 closed without some of its sampled clients" in first.metrics["user_epsilon_reason"]
    assert second.metrics["user_epsilon"] == pytest.approx(opacus_epsilon(1.0, 2), rel=1e-6)  # sticky
    assert "round 1 was no Poisson sample" in second.metrics["user_epsilon_reason"]
    assert world.blob(second.server_state)[UNAMPLIFIED_SINCE].tolist() == [1]


def test_an_empty_cohort_is_aggregated_as_a_noise_only_step() -> None:
    world = World(config(adaptive=False))

    async def scenario() -> list[RoundAggregated]:
        await world.created()
        return aggregated(await world.quorum(1, []))

    [done] = asyncio.run(scenario())

    noise = np.random.default_rng(1).normal(0.0, Z * C0, size=2) / 2.0  # not adaptive: z_delta = z
    np.testing.assert_allclose(world.blob(done.model_digest)["w"], BASE["w"] + noise, rtol=1e-5)
    assert done.num_updates == 0 and done.metrics["user_epsilon_amplified"] is True


def test_a_round_that_would_pass_the_budget_is_not_released_and_the_run_ends() -> None:
    budget = (opacus_epsilon(0.5, 1) + opacus_epsilon(1.0, 1)) / 2  # enough for a sampled round, not for a partial
    world = World(config(epsilon=budget))

    async def scenario() -> list[Event]:
        await world.created()
        return await world.quorum(1, [BIG], partial=True)

    events = asyncio.run(scenario())

    assert not aggregated(events)
    [ended] = [e for e in events if isinstance(e, RunCompleted)]
    assert ended.reason == "budget" and ended.rounds == 0 and ended.metrics["user_epsilon"] > budget


def test_a_run_whose_first_round_would_pass_the_budget_never_starts() -> None:
    log = InMemoryEventLog()
    created = RunCreated(run_id="r", config=config(epsilon=opacus_epsilon(0.5, 1) / 2).to_dict())

    async def scenario() -> list[Event]:
        await AggregatorWorker(log, cast(PoolEvaluator, NoEvaluation())).handle(Envelope(event=created))
        return [r.envelope.event for r in await log.read_stream("run:r")]

    [ended] = asyncio.run(scenario())

    assert isinstance(ended, RunCompleted) and ended.reason == "budget" and ended.rounds == 0


def test_a_round_without_a_poisson_sampling_record_fails_and_is_retried() -> None:
    world = World(config())

    async def scenario() -> list[Event]:
        await world.created()
        return await world.quorum(1, [BIG], sampling={})

    events = asyncio.run(scenario())

    assert not aggregated(events)
    assert "user-level DP needs a Poisson-sampled round" in getattr(events[-1], "reason", "")
