"""The coordinator: the control plane of a run, as a small facade over its collaborators.

`ClientRegistry` (registrations, evictions), `RunLedger` (each run folded from its stream; the commit loop),
`UploadAdmission` (an update from its header to UpdateAccepted or a refusal), `ModelServer` (model bytes and
manifests) and the pure decider (`decide.py`). It appends events; the outbox relay publishes them.
"""

from __future__ import annotations

import logging
import uuid

from contracts.config import RunConfig
from contracts.errors import TransientError
from contracts.events import ClientEvicted, ClientRegistered, Event, RunCreated
from contracts.ports import Clock, EventLog
from contracts.run_state import RunState
from ops.clock import SystemClock
from ops.lifecycle import LoopStop
from ops.metrics import FedbusMetrics
from services.coordinator import decide
from services.coordinator.admission import UploadAdmission
from services.coordinator.commit import RunLedger
from services.coordinator.model_serving import ModelServer
from services.coordinator.registry import ClientRegistry

log = logging.getLogger(__name__)


class Coordinator:
    def __init__(self, log_: EventLog, *, clock: Clock | None = None, metrics: FedbusMetrics | None = None) -> None:
        self._log = log_
        self.metrics = metrics or FedbusMetrics()
        self.clients = ClientRegistry(log_)
        self.runs = RunLedger(log_, clock or SystemClock(), self.metrics)
        self.models = ModelServer(log_, self.runs, self.metrics)
        self.uploads = UploadAdmission(self.runs, self.models, self.clients)
        self._position = 0  # how far `sync` has read the whole log
        self._ticks = LoopStop()

    async def recover(self) -> None:
        """Rebuild clients and runs from the whole log (after a restart)."""
        await self.sync()
        for run_id in self.runs.run_ids():
            await self.runs.refresh(run_id)

    async def sync(self) -> None:
        """Take in what other writers appended: the API's runs and evictions, other coordinators' clients."""
        while batch := await self._log.read_all(after_position=self._position, limit=1000):
            for recorded in batch:
                event = recorded.envelope.event
                if isinstance(event, ClientRegistered | ClientEvicted):
                    self.clients.apply(event)
                elif isinstance(event, RunCreated):
                    self.runs.discover(event)
            self._position = batch[-1].position

    async def create_run(self, config: RunConfig, run_id: str | None = None) -> str:
        run_id = run_id or f"run-{uuid.uuid4().hex[:10]}"
        await self.runs.create(RunCreated(run_id=run_id, config=config.to_dict()))
        return run_id

    def run_state(self, run_id: str) -> RunState:
        return self.runs.state(run_id)

    async def resume(self, run_id: str, since: float) -> None:
        """Take up a run left by processes that ended (`decide.resume`): its open attempt is started again, unless
        it was started at or after `since` (the clock's time when these processes took over)."""
        await self.runs.commit(run_id, lambda run, now: decide.resume(run, self.clients.pool(), now, since), self._due)

    async def stop_run(self, run_id: str) -> None:
        await self.runs.commit(run_id, lambda run, _now: decide.stop(run), self._due)

    async def decline(self, client_id: str, run_id: str, round_: int, reason: str) -> None:
        await self.runs.commit(
            run_id,
            lambda run, now: decide.decline(run, client_id, round_, reason, self.clients.pool(), now),
            self._due,
        )

    async def advance(self, run_id: str | None = None) -> None:
        """Take every decision that is due: start, close, retry, complete. Safe to call any time."""
        await self.sync()
        for rid in [run_id] if run_id else self.runs.run_ids():
            if rid in self.runs.run_ids():
                await self.runs.commit(rid, self._due, self._due)

    async def tick_forever(self, interval: float = 0.2) -> None:
        """Deadlines and grace periods close rounds even when no event arrives; a failed tick is retried. Ends
        after the tick in progress once `stop_ticking` is called."""
        while not self._ticks.is_set():
            try:
                await self.advance()
            except TransientError as exc:
                log.warning("coordinator tick: %s; retrying", exc)
            except Exception:
                log.exception("coordinator tick failed; retrying")
            await self._ticks.sleep(interval)

    def stop_ticking(self) -> None:
        self._ticks.set()

    def _due(self, run: RunState, now: float) -> list[Event]:
        return decide.due(run, self.clients.pool(), now)
