"""The aggregator worker: builds the initial model on RunCreated and runs FedAvg on QuorumReached.

Idempotent: the inbox claim commits in the same transaction as the new model and its event, so a
redelivered QuorumReached (after a crash before the ack) changes nothing.
"""

from __future__ import annotations

import asyncio
import logging
import time

from contracts.compression import decompress_update
from contracts.config import RunConfig
from contracts.envelope import Envelope
from contracts.events import (
    ModelInitialized,
    QuorumReached,
    RoundAggregated,
    RoundFailed,
    RunCreated,
)
from contracts.ports import EventLog
from contracts.streams import run_stream
from contracts.tensor_codec import decode_tensors, encode_with_manifest
from ops.metrics import FedbusMetrics
from ops.telemetry import context_of, current_traceparent, tracer
from workers.aggregator.evaluator import PoolEvaluator
from workers.learning.fedavg import apply_update
from workers.learning.robust import aggregator_for

log = logging.getLogger(__name__)
_TRACER = tracer("fedbus.aggregator")
CONSUMER = "aggregator"


MAX_CONFIGS = 64


class AggregatorWorker:
    def __init__(
        self,
        log_: EventLog,
        evaluator: PoolEvaluator,
        *,
        max_weight: float | None = None,
        metrics: FedbusMetrics | None = None,
    ) -> None:
        self._log = log_
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
        weights = await self._evaluator.initial(config.model, config.seed)
        data, manifest = encode_with_manifest(weights)
        params = sum(int(a.size) for a in weights.values())
        done = ModelInitialized(
            run_id=event.run_id, model_version=0, model_digest=manifest.digest, num_parameters=params
        )
        async with self._log.transaction() as uow:
            if await uow.claim(CONSUMER, envelope.event_id):
                await uow.put_blob(manifest.digest, "model", data)
                await uow.append(run_stream(event.run_id), [Envelope(event=done, traceparent=envelope.traceparent)])

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
        rules = config.round
        aggregator = aggregator_for(
            rules.aggregator,
            f=rules.byzantine_f,
            trim=rules.trim_fraction,
            clip_norm=rules.clip_norm,
            max_weight=self._max_weight if rules.max_sample_weight is None else rules.max_sample_weight,
        )
        for digest, num_samples in zip(event.update_digests, event.sample_counts, strict=True):
            delta = decompress_update(await self._log.get_blob(digest))
            await asyncio.to_thread(aggregator.add, delta, num_samples)
        try:
            combined = await asyncio.to_thread(aggregator.result)
        except ValueError as exc:
            # The rule cannot combine these updates (e.g. Krum with too few): fail the round so the
            # coordinator retries it, instead of leaving it closed and never aggregated.
            await self._fail(envelope, event, f"aggregation failed: {exc}")
            return
        weights = apply_update(base, combined)
        with _TRACER.start_as_current_span("evaluate"):
            metrics = await self._evaluator.evaluate(
                weights, model=config.model, dataset=config.dataset, limit=config.eval_limit
            )
        metrics["train_loss"] = event.train_loss
        data, manifest = encode_with_manifest(weights)
        done = RoundAggregated(
            run_id=event.run_id,
            round=event.round,
            model_version=event.model_version + 1,
            model_digest=manifest.digest,
            num_updates=aggregator.count,
            metrics=metrics,
            duration_s=time.perf_counter() - started,
        )
        # A redelivery after this commit (a crash before the ack) finds its claim taken and changes nothing.
        async with self._log.transaction() as uow:
            if await uow.claim(CONSUMER, envelope.event_id):
                await uow.put_blob(manifest.digest, "model", data)
                await uow.append(run_stream(event.run_id), [Envelope(event=done, traceparent=current_traceparent())])
                self.aggregations += 1
                if self._metrics is not None:
                    self._metrics.observe(done, time.time())
                log.info("aggregated round %s of %s: %s", event.round, event.run_id, metrics)

    async def _fail(self, envelope: Envelope, event: QuorumReached, reason: str) -> None:
        failed = RoundFailed(run_id=event.run_id, round=event.round, attempt=event.attempt, reason=reason[:300])
        async with self._log.transaction() as uow:
            if await uow.claim(CONSUMER, envelope.event_id):
                await uow.append(run_stream(event.run_id), [Envelope(event=failed, traceparent=current_traceparent())])
        log.error("round %s of %s not aggregated: %s", event.round, event.run_id, reason)
