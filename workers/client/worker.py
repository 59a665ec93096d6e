"""The client worker: reacts to RoundStarted by training locally with DP and streaming its update back."""

from __future__ import annotations

import asyncio
import logging
import time
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import grpc

from contracts.capability import STEPS, TRAIN_S, UPLINK, ClientPlan
from contracts.compression import ErrorFeedback, compress_update, parse_compression
from contracts.envelope import Envelope
from contracts.events import (
    DECLINE_DATA_UNAVAILABLE,
    DECLINE_PRIVACY_BUDGET,
    DECLINE_TASK_UNAVAILABLE,
    DECLINE_TOO_LATE,
    RoundStarted,
    RunCompleted,
)
from contracts.ports import Clock
from contracts.tensor_codec import decode_tensors, sha256_hex
from contracts.tensors import TensorDict
from contracts.train_plan import TrainPlan
from contracts.uploads import UploadHeader
from fedbus.data import DataRequest, Simulation
from fedbus.errors import DataUnavailable, TaskError
from ops.telemetry import context_of, tracer
from workers.client.ledger_store import LedgerStore
from workers.client.trainer import PoolTrainer
from workers.client.transport import FederationClient, Registration
from workers.learning.local_round import LocalTrainConfig

if TYPE_CHECKING:  # Opacus (and torch) stay out of the client's own process: its pool plans and accounts
    from workers.learning.privacy import PrivacyPlan

log = logging.getLogger(__name__)
_TRACER = tracer("fedbus.client")


@dataclass(slots=True)
class RunMemory:
    """What a client keeps across the rounds of one run."""

    run_id: str
    request: DataRequest
    num_samples: int
    dp: PrivacyPlan | None  # None when the run trains without differential privacy
    ledger: dict[str, Any] | None = None
    feedback: ErrorFeedback = field(default_factory=ErrorFeedback)
    done: set[tuple[int, int]] = field(default_factory=set)  # (round, attempt) already handled


class ClientWorker:
    def __init__(
        self,
        transport: FederationClient,
        trainer: PoolTrainer,
        registration: Registration,
        *,
        data_dir: str | None,
        clock: Clock,
        ledgers: LedgerStore | None = None,
        client_data: Path | None = None,
        share: tuple[int, int] | None = None,
    ) -> None:
        """`client_data`: this client's own data folder; or `share` (index, count): in a simulation, its
        share of the task's global data set (found in `data_dir`), split by the run's partition scheme."""
        if client_data is not None and share is None:
            self._source: Path | tuple[int, int] = client_data
        elif share is not None and client_data is None:
            self._source = share
        else:
            raise ValueError("a client trains on its own data or on a simulated share: give one of the two")
        # Each client's training randomness differs: by its share, or by its identity when it has own data.
        self._seed_offset = share[0] if share is not None else zlib.crc32(registration.client_id.encode()) % 997
        self._ledgers = ledgers
        self._transport = transport
        self._trainer = trainer
        self._registration = registration
        self._data_dir = data_dir
        self._clock = clock
        self._runs: dict[str, RunMemory] = {}
        self._models: dict[str, TensorDict] = {}
        self._uplink: float | None = None  # bytes per second of the last upload: reported with the next one
        self.rounds_trained = 0

    @property
    def client_id(self) -> str:
        return self._registration.client_id

    async def handle(self, envelope: Envelope) -> None:
        event = envelope.event
        if isinstance(event, RoundStarted) and self.client_id not in event.selected:
            log.info("client %s: round %s of %s started without it", self.client_id, event.round, event.run_id)
        elif isinstance(event, RoundStarted):
            log.info(
                "client %s: selected for round %s (attempt %s) of %s",
                self.client_id,
                event.round,
                event.attempt,
                event.run_id,
            )
            # Once, here: a CodecError dead-letters the event.
            plan = TrainPlan.from_dict(event.train).adapted(self._own_plan(event))
            attributes: dict[str, str | int] = {
                "fedbus.client_id": self.client_id,
                "fedbus.round": event.round,
                "fedbus.run_id": event.run_id,
            }
            parent = context_of(envelope.traceparent)
            with _TRACER.start_as_current_span("client round", context=parent, attributes=attributes):
                await self._on_round(event, plan)
        elif isinstance(event, RunCompleted):
            self._runs.pop(event.run_id, None)

    def _own_plan(self, event: RoundStarted) -> ClientPlan | None:
        """This client's capability-aware plan for the round, if the coordinator made one."""
        data = event.plans.get(self.client_id)
        return None if data is None else ClientPlan.from_dict(self.client_id, data)

    async def _on_round(self, event: RoundStarted, plan: TrainPlan) -> None:
        try:
            memory = await self._memory(event, plan)
        except (TaskError, DataUnavailable) as exc:
            # Retrying will not fix the task or make the data appear: say so instead of poisoning the queue.
            await self._cannot_train(event, exc)
            return
        if (event.round, event.attempt) in memory.done:
            return
        if self._clock.now() > event.deadline:
            log.info("client %s: round %s closed before it could train", self.client_id, event.round)
            await self._decline(event, DECLINE_TOO_LATE)
            return
        memory.done.add((event.round, event.attempt))
        try:
            await self._train_and_upload(event, plan, memory)
        except (TaskError, DataUnavailable) as exc:
            await self._cannot_train(event, exc)
        except BaseException:
            # Not handled (e.g. the coordinator unreachable past the retries): the redelivery must try again.
            memory.done.discard((event.round, event.attempt))
            raise

    async def _train_and_upload(self, event: RoundStarted, plan: TrainPlan, memory: RunMemory) -> None:
        privacy, dp = plan.privacy, memory.dp
        if dp is not None:
            steps = dp.steps_per_round if plan.max_steps is None else min(plan.max_steps, dp.steps_per_round)
            after = await self._trainer.epsilon_after(  # the accountant's curves: CPU work, in the pool
                memory.ledger,
                privacy.accountant,
                dp.noise_multiplier,
                dp.sample_rate,
                steps,
                privacy.delta,
            )
            if privacy.exceeded_by(after):
                log.info("client %s declines round %s: epsilon would reach %.3f", self.client_id, event.round, after)
                await self._decline(event, DECLINE_PRIVACY_BUDGET)
                return
        with _TRACER.start_as_current_span("download model"):
            try:
                base = await self._model(event)
            except grpc.aio.AioRpcError as exc:
                if exc.code() != grpc.StatusCode.FAILED_PRECONDITION:
                    raise
                # A round that closed while this client was away (a restart, a backlog): nothing spent on it.
                log.info("client %s: round %s closed before it could train", self.client_id, event.round)
                return
        config = LocalTrainConfig(
            task=plan.task,
            epochs=plan.epochs,
            batch_size=plan.batch_size,
            lr=plan.lr,
            momentum=plan.momentum,
            dp=dp is not None,
            max_grad_norm=privacy.max_grad_norm,
            noise_multiplier=dp.noise_multiplier if dp else None,
            delta=privacy.delta,
            seed=plan.seed * 1000 + event.round * 7 + self._seed_offset,
            proximal_mu=plan.proximal_mu,
            accountant=privacy.accountant,
            max_steps=plan.max_steps,
        )
        started = time.perf_counter()
        with _TRACER.start_as_current_span("train", attributes={"fedbus.samples": memory.num_samples}):
            result = await self._trainer.train(base, memory.request, config, memory.ledger)
        train_s = time.perf_counter() - started
        log.info(
            "client %s: trained round %s in %.1f s, %d steps on %d samples (%s)",
            self.client_id,
            event.round,
            train_s,
            result.steps,
            result.num_samples,
            "no DP" if result.epsilon is None else f"epsilon {result.epsilon:.3f}",
        )
        memory.ledger = result.ledger if dp is not None else None
        if memory.ledger is not None and self._ledgers is not None:
            # Spent once the noisy model exists, whether or not the upload then succeeds.
            await asyncio.to_thread(self._ledgers.save, event.run_id, memory.ledger)
        spec = parse_compression(plan.compression)
        with _TRACER.start_as_current_span("compress", attributes={"fedbus.codec": str(spec)}):
            compressed = await asyncio.to_thread(compress_update, result.delta, spec, memory.feedback)
        header = UploadHeader(
            run_id=event.run_id,
            round=event.round,
            client_id=self.client_id,
            base_model_version=event.model_version,
            num_samples=result.num_samples,
            codec=str(spec),
            total_size=len(compressed.payload),
            sha256=sha256_hex(compressed.payload),
            raw_bytes=compressed.raw_bytes,
            epsilon=result.epsilon,
            metrics={k: float(v) for k, v in result.metrics.items()} | self._measurements(train_s, result.steps),
        )
        try:
            with _TRACER.start_as_current_span("upload", attributes={"fedbus.bytes": len(compressed.payload)}):
                sending = time.perf_counter()
                await self._transport.upload(header, compressed.payload)
                self._uplink = len(compressed.payload) / max(time.perf_counter() - sending, 1e-6)
            self.rounds_trained += 1
            log.info("client %s: uploaded round %s (%d bytes)", self.client_id, event.round, len(compressed.payload))
        except grpc.aio.AioRpcError as exc:
            # The coordinator refused or the round closed: nothing to retry, the next round will come. A round that
            # closed before the update came (FAILED_PRECONDITION: a straggler under a quorum) is no fault of anyone's.
            level = logging.INFO if exc.code() == grpc.StatusCode.FAILED_PRECONDITION else logging.WARNING
            log.log(
                level,
                "client %s: upload for round %s refused: %s %s",
                self.client_id,
                event.round,
                exc.code(),
                exc.details(),
            )

    def _measurements(self, train_s: float, steps: int) -> dict[str, float]:
        """What this round cost, for the coordinator's capability-aware plans (contracts/capability.py)."""
        uplink = {} if self._uplink is None else {UPLINK: self._uplink}
        return {TRAIN_S: train_s, STEPS: float(steps)} | uplink

    async def _decline(self, event: RoundStarted, reason: str) -> None:
        try:
            await self._transport.decline(event.run_id, event.round, reason)
        except grpc.aio.AioRpcError as exc:
            # FAILED_PRECONDITION: the round closed meanwhile, and nobody waits for an answer any more.
            level = logging.INFO if exc.code() == grpc.StatusCode.FAILED_PRECONDITION else logging.WARNING
            log.log(level, "client %s: decline refused: %s %s", self.client_id, exc.code(), exc.details())

    async def _cannot_train(self, event: RoundStarted, error: TaskError | DataUnavailable) -> None:
        log.error("client %s cannot train round %s: %s", self.client_id, event.round, error)
        reason = DECLINE_TASK_UNAVAILABLE if isinstance(error, TaskError) else DECLINE_DATA_UNAVAILABLE
        await self._decline(event, reason)

    def _request(self, plan: TrainPlan) -> DataRequest:
        if isinstance(self._source, Path):
            return DataRequest(location=self._source)
        index, count = self._source
        simulation = Simulation(
            scheme=plan.partition,
            clients=count,
            index=index,
            seed=plan.seed,
            limit=plan.train_limit,
            dataset_dir=Path(self._data_dir) if self._data_dir else None,
        )
        return DataRequest(simulation=simulation)

    async def _memory(self, event: RoundStarted, plan: TrainPlan) -> RunMemory:
        if event.run_id not in self._runs:
            request = self._request(plan)
            num_samples = await self._trainer.prepare(plan.task, request, private=plan.privacy.enabled)
            dp = None
            if plan.privacy.enabled:
                dp = await self._trainer.plan_privacy(
                    target_epsilon=plan.privacy.epsilon,
                    delta=plan.privacy.delta,
                    num_samples=num_samples,
                    batch_size=plan.batch_size,
                    epochs_per_round=plan.epochs,
                    rounds=plan.rounds,
                    accountant=plan.privacy.accountant,
                )
            kept = await asyncio.to_thread(self._ledgers.load, event.run_id) if self._ledgers and dp else None
            self._runs[event.run_id] = RunMemory(
                run_id=event.run_id, request=request, num_samples=num_samples, dp=dp, ledger=kept
            )
        return self._runs[event.run_id]

    async def _model(self, event: RoundStarted) -> TensorDict:
        if event.model_digest not in self._models:
            data = await self._transport.download_model(
                event.run_id, event.model_version, event.model_digest, event.round
            )
            if len(self._models) >= 2:
                self._models.pop(next(iter(self._models)))
            self._models[event.model_digest] = decode_tensors(data)
        return self._models[event.model_digest]
