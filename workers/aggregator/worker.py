"""The aggregator worker: builds the initial model on RunCreated; on QuorumReached combines the round's
updates (`round.aggregator`, or user-level DP-FedAvg: `user_dp.py`) and applies the run's strategy's server
step (`workers.learning.strategies`).

Idempotent: the inbox claim commits in the same transaction as the new model, the strategy's state and the
event, so a redelivered QuorumReached (after a crash before the ack) changes nothing.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

import numpy as np

from contracts.compression import decompress_update
from contracts.config import RunConfig
from contracts.envelope import Envelope
from contracts.errors import CodecError, ConfigError, NotFound
from contracts.events import (
    RUN_BUDGET,
    ModelInitialized,
    QuorumReached,
    RoundAggregated,
    RoundFailed,
    RunCompleted,
    RunCreated,
)
from contracts.ports import EventLog
from contracts.streams import run_stream
from contracts.tensor_codec import decode_tensors, encode_tensors, encode_with_manifest, sha256_hex
from fedbus.errors import DataUnavailable, TaskError
from ops.metrics import FedbusMetrics
from ops.telemetry import context_of, current_traceparent, tracer
from workers.aggregator.evaluator import PoolEvaluator
from workers.aggregator.user_dp import UserLevelRound, first_round_epsilon
from workers.learning.fedavg import scaled
from workers.learning.robust import aggregator_for
from workers.learning.strategies import server_step

log = logging.getLogger(__name__)
_TRACER = tracer("fedbus.aggregator")
CONSUMER = "aggregator"


MAX_CONFIGS = 64
TASK_UNAVAILABLE = "task_unavailable"  # RunCompleted's reason when the aggregator cannot load the run's task
INIT_MODEL_UNUSABLE = "init_model_unusable"  # ... or the init_model blob is missing or does not fit the task


class AggregatorWorker:
    def __init__(
        self,
        log_: EventLog,
        evaluator: PoolEvaluator,
        *,
        max_weight: float | None = None,
        metrics: FedbusMetrics | None = None,
        rng: np.random.Generator | None = None,
    ) -> None:
        self._log = log_
        # User-level DP's noise: OS entropy unless a test injects a seeded generator. Noise anyone could
        # reproduce from the log could be subtracted again.
        self._rng = rng if rng is not None else np.random.default_rng()
        self._metrics = metrics
        self._evaluator = evaluator
        self._max_weight = max_weight
        self._configs: dict[str, RunConfig] = {}
        self.aggregations = 0

    async def handle(self, envelope: Envelope) -> None:
        event = envelope.event
        if isinstance(event, RunCreated):
            await self._initialize(envelope, event)
        elif isinstance(event, QuorumReached):
            attributes: dict[str, str | int] = {
                "fedbus.run_id": event.run_id,
                "fedbus.round": event.round,
                "fedbus.updates": len(event.update_ids),
            }
            with _TRACER.start_as_current_span(
                "aggregate", context=context_of(envelope.traceparent), attributes=attributes
            ):
                await self._aggregate(envelope, event)

    async def _initialize(self, envelope: Envelope, event: RunCreated) -> None:
        history = await self._log.read_stream(run_stream(event.run_id))
        if any(isinstance(r.envelope.event, ModelInitialized) for r in history):
            return
        config = RunConfig.from_dict(event.config)
        if await self._past_user_budget(config):
            log.error("run %s cannot start: one round would pass its user-level epsilon budget", event.run_id)
            await self._end_run(envelope, RunCompleted(run_id=event.run_id, reason=RUN_BUDGET, rounds=0, metrics={}))
            return
        try:
            data = await self._initial_model(config)
        except (TaskError, NotFound, ConfigError, CodecError) as exc:
            # Not one for a redelivery: the run cannot start anywhere like this, so it ends, saying why.
            reason = TASK_UNAVAILABLE if isinstance(exc, TaskError) else INIT_MODEL_UNUSABLE
            log.error("run %s cannot start: %s", event.run_id, exc)
            await self._end_run(envelope, RunCompleted(run_id=event.run_id, reason=reason, rounds=0, metrics={}))
            return
        weights = decode_tensors(data)
        params = sum(int(a.size) for a in weights.values())
        digest = sha256_hex(data)
        done = ModelInitialized(run_id=event.run_id, model_version=0, model_digest=digest, num_parameters=params)
        async with self._log.transaction() as uow:
            if await uow.claim(CONSUMER, envelope.event_id):
                if config.init_model is None:
                    await uow.put_blob(digest, "model", data)
                await uow.append(run_stream(event.run_id), [Envelope(event=done, traceparent=envelope.traceparent)])

    async def _past_user_budget(self, config: RunConfig) -> bool:
        dp = config.user_privacy
        return (
            dp.enabled
            and dp.epsilon is not None
            and dp.exceeded_by(await asyncio.to_thread(first_round_epsilon, config))
        )

    async def _end_run(self, envelope: Envelope, ended: RunCompleted) -> None:
        """Append RunCompleted for the run `envelope` is about, once (the inbox claim)."""
        async with self._log.transaction() as uow:
            if await uow.claim(CONSUMER, envelope.event_id):
                await uow.append(run_stream(ended.run_id), [Envelope(event=ended, traceparent=envelope.traceparent)])

    async def _initial_model(self, config: RunConfig) -> bytes:
        """The encoded model version 0: the task's seeded weights, or the `init_model` blob once it is checked
        to fit the task's model (NotFound, ConfigError naming the mismatch, CodecError)."""
        if config.init_model is None:
            data, _ = encode_with_manifest(await self._evaluator.initial(config.task, config.seed))
            return data
        data = await self._log.get_blob(config.init_model)
        await self._evaluator.check_fits(decode_tensors(data), task=config.task)
        return data

    async def _config(self, run_id: str) -> RunConfig:
        """The run's config, read once per run from its first event (the only history an aggregator reads)."""
        if run_id not in self._configs:
            history = await self._log.read_stream(run_stream(run_id))
            created = next(r.envelope.event for r in history if isinstance(r.envelope.event, RunCreated))
            assert isinstance(created, RunCreated)
            while len(self._configs) >= MAX_CONFIGS:
                self._configs.pop(next(iter(self._configs)))
            self._configs[run_id] = RunConfig.from_dict(created.config)
        return self._configs[run_id]

    async def _aggregate(self, envelope: Envelope, event: QuorumReached) -> None:
        started = time.perf_counter()
        if not event.base_model_digest or len(event.update_digests) != len(event.update_ids):
            # Written by a coordinator before QuorumReached carried the updates: fail the round, it is retried.
            await self._fail(envelope, event, "QuorumReached lacks the base model and update digests")
            return
        config = await self._config(event.run_id)
        base = decode_tensors(await self._log.get_blob(event.base_model_digest))
        state = decode_tensors(await self._log.get_blob(event.server_state)) if event.server_state else {}
        user_dp: UserLevelRound | None = None
        rules = config.round
        try:
            if config.user_privacy.enabled:
                user_dp = UserLevelRound(config, base, state, event, self._rng)
                state = user_dp.strategy_state
        except ValueError as exc:  # a round or state user-level DP cannot take: the round fails, it is retried
            await self._fail(envelope, event, f"user-level DP: {exc}")
            return
        aggregator = user_dp or aggregator_for(
            rules.aggregator,
            f=rules.byzantine_f,
            trim=rules.trim_fraction,
            clip_norm=rules.clip_norm,
            max_weight=self._max_weight if rules.max_sample_weight is None else rules.max_sample_weight,
        )
        staleness = event.staleness or (0,) * len(event.update_ids)
        if len(staleness) != len(event.update_ids):
            await self._fail(envelope, event, "QuorumReached's staleness does not match its updates")
            return
        for digest, num_samples, tau in zip(event.update_digests, event.sample_counts, staleness, strict=True):
            delta = decompress_update(await self._log.get_blob(digest))
            if tau:  # FedBuff: an update trained `tau` versions ago counts s(tau) of one trained on the base
                delta = scaled(delta, config.strategy.staleness_weight(tau))
            await asyncio.to_thread(aggregator.add, delta, num_samples)
        try:
            combined = await asyncio.to_thread(aggregator.result)
        except ValueError as exc:
            # The rule cannot combine these updates (e.g. Krum with too few): fail the round so the
            # coordinator retries it, instead of leaving it closed and never aggregated.
            await self._fail(envelope, event, f"aggregation failed: {exc}")
            return
        try:
            weights, new_state = await asyncio.to_thread(server_step, config.strategy, base, combined, state)
        except ValueError as exc:  # a state that does not fit the model: the round fails and is retried
            await self._fail(envelope, event, f"strategy step failed: {exc}")
            return
        privacy: dict[str, Any] = {}
        if user_dp is not None:
            dp_state, privacy, spent = await asyncio.to_thread(user_dp.privacy)
            if config.user_privacy.exceeded_by(spent.epsilon):  # only a round that lost its amplification
                await self._end_on_budget(envelope, event, privacy)
                return
            new_state = {**new_state, **dp_state}
        kept = encode_tensors(new_state) if new_state else b""
        kept_digest = sha256_hex(kept) if kept else ""
        try:
            with _TRACER.start_as_current_span("evaluate"):
                metrics = await self._evaluator.evaluate(weights, task=config.task, limit=config.eval_limit)
        except (TaskError, DataUnavailable) as exc:
            await self._fail(envelope, event, f"central evaluation failed: {exc}")
            return
        metrics["train_loss"] = event.train_loss
        metrics.update(privacy)
        data, manifest = encode_with_manifest(weights)
        done = RoundAggregated(
            run_id=event.run_id,
            round=event.round,
            model_version=event.model_version + 1,
            attempt=event.attempt,
            model_digest=manifest.digest,
            num_updates=aggregator.count,
            metrics=metrics,
            duration_s=time.perf_counter() - started,
            server_state=kept_digest,
        )
        # A redelivery after this commit (a crash before the ack) finds its claim taken and changes nothing; the
        # strategy's state is a blob like the model, so any aggregator (or a restarted one) takes it up from here.
        async with self._log.transaction() as uow:
            if await uow.claim(CONSUMER, envelope.event_id):
                await uow.put_blob(manifest.digest, "model", data)
                if kept:
                    await uow.put_blob(kept_digest, "strategy", kept)
                await uow.append(run_stream(event.run_id), [Envelope(event=done, traceparent=current_traceparent())])
                self.aggregations += 1
                if self._metrics is not None:
                    self._metrics.observe(done, time.time())
                log.info("aggregated round %s of %s: %s", event.round, event.run_id, metrics)

    async def _end_on_budget(self, envelope: Envelope, event: QuorumReached, privacy: dict[str, Any]) -> None:
        """The run ends instead of releasing a round that would take it past its user-level budget."""
        ended = RunCompleted(run_id=event.run_id, reason=RUN_BUDGET, rounds=event.round - 1, metrics=privacy)
        await self._end_run(envelope, ended)
        log.warning("run %s ends before round %s: it would pass the user-level budget", event.run_id, event.round)

    async def _fail(self, envelope: Envelope, event: QuorumReached, reason: str) -> None:
        failed = RoundFailed(run_id=event.run_id, round=event.round, attempt=event.attempt, reason=reason[:300])
        async with self._log.transaction() as uow:
            if await uow.claim(CONSUMER, envelope.event_id):
                await uow.append(run_stream(event.run_id), [Envelope(event=failed, traceparent=current_traceparent())])
        log.error("round %s of %s not aggregated: %s", event.round, event.run_id, reason)
