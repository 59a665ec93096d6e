"""The commit loop: refresh a run from its stream, decide, append at the expected version, retry on conflict.

Another writer (an aggregator's RoundAggregated, the API's stop, a second coordinator) may append between
the refresh and the append; the stream's UNIQUE(stream, version) turns that into a ConcurrencyConflict, and
the loop folds what the other wrote and decides again. A restarted coordinator rebuilds every run the same way.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence

from contracts.envelope import Envelope
from contracts.errors import ConcurrencyConflict
from contracts.events import Event, RoundStarted, RunCreated
from contracts.ports import Clock, EventStore
from contracts.run_state import RunState, state_from_created
from contracts.streams import run_stream
from ops.metrics import FedbusMetrics
from ops.telemetry import context_of, current_traceparent, tracer
from services.coordinator.errors import RunNotFound

_TRACER = tracer("fedbus.coordinator")
MAX_CONFLICTS = 20

Decision = Callable[[RunState, float], Sequence[Event]]
"""A decider bound to its arguments: (the refreshed state, now) -> the events to append."""


class RunLedger:
    """The runs this coordinator knows, each kept current with its stream, and the only path to append to them."""

    def __init__(self, log: EventStore, clock: Clock, metrics: FedbusMetrics) -> None:
        self._log = log
        self._clock = clock
        self._metrics = metrics
        self._runs: dict[str, RunState] = {}
        self._lock = asyncio.Lock()

    def discover(self, event: RunCreated) -> None:
        """A run appended by another writer (the API): start following it."""
        if event.run_id not in self._runs:
            self._runs[event.run_id] = state_from_created(event)

    def run_ids(self) -> list[str]:
        return list(self._runs)

    def state(self, run_id: str) -> RunState:
        try:
            return self._runs[run_id]
        except KeyError as exc:
            raise RunNotFound(f"no run {run_id!r}") from exc

    async def create(self, event: RunCreated) -> None:
        async with self._lock:
            await self._log.append(run_stream(event.run_id), [Envelope(event=event)], expected_version=0)
            self.discover(event)

    async def refresh(self, run_id: str) -> RunState:
        """The run with every event of its stream folded in."""
        run = self.state(run_id)
        for recorded in await self._log.read_stream(run_stream(run_id), after_version=run.version):
            run.apply_recorded(recorded)
            self._metrics.observe(recorded.envelope.event, recorded.envelope.occurred_at, run)
        return run

    async def commit(
        self,
        run_id: str,
        decision: Decision,
        follow_up: Decision,
        *,
        fresh: bool = True,
        blobs: Sequence[tuple[str, str, bytes]] = (),
    ) -> None:
        """Append what `decision` returns, then what `follow_up` returns, until nothing more is due.

        `blobs` ((digest, kind, data), e.g. an accepted update) are stored in the transaction that appends what
        `decision` returns, so they exist exactly when its events do: a refused upload leaves no blob behind.

        The events appended are folded into the run as written (no read back). With `fresh=False` the first
        decision is taken on the run as this coordinator last knew it, which saves a read on the hot path (an
        accepted upload): if anyone else appended since, the append conflicts; if the decision refuses or finds
        nothing to do, it may have been stale. Either way the run is refreshed and decided again.
        """
        async with self._lock:
            run = await self.refresh(run_id) if fresh else self.state(run_id)
            known = fresh  # whether `run` is known to be the stream as it is (or was, at our own append)
            for _ in range(MAX_CONFLICTS):
                now = self._clock.now()
                try:
                    events = list(decision(run, now))
                except Exception:
                    if known:
                        raise
                    events = []
                if not events:
                    if known:
                        break
                    run, known = await self.refresh(run_id), True
                    continue
                envelopes = self._envelopes(run, events, now)
                try:
                    async with self._log.transaction() as uow:
                        for digest, kind, data in blobs:  # before the append: not under its lock on PostgreSQL
                            await uow.put_blob(digest, kind, data)
                        version = await uow.append(run_stream(run_id), envelopes, expected_version=run.version)
                except ConcurrencyConflict:
                    run, known = await self.refresh(run_id), True
                    continue
                self._fold(run, envelopes, version)
                decision, known, blobs = follow_up, True, ()
            else:
                raise ConcurrencyConflict(f"run {run_id}: gave up after repeated conflicts")

    def _fold(self, run: RunState, envelopes: Sequence[Envelope], version: int) -> None:
        """Fold what this coordinator just appended, ending at `version` (a refresh may have folded it already)."""
        first = version - len(envelopes) + 1
        for offset, envelope in enumerate(envelopes):
            if run.apply_at(first + offset, envelope.event, envelope.occurred_at, envelope.traceparent):
                self._metrics.observe(envelope.event, envelope.occurred_at, run)

    def _envelopes(self, run: RunState, events: Sequence[Event], now: float) -> list[Envelope]:
        """Each event joins its round's trace; a RoundStarted begins a new trace (one per round).

        Stamped with the decider's `now`, so that a refold sees the times the decisions were made with.
        """
        envelopes = []
        round_trace = run.current.traceparent if run.current else None
        for event in events:
            if isinstance(event, RoundStarted):
                attributes: dict[str, str | int] = {
                    "fedbus.run_id": event.run_id,
                    "fedbus.round": event.round,
                    "fedbus.attempt": event.attempt,
                }
                with _TRACER.start_as_current_span(
                    f"round {event.round}", context=context_of(None), attributes=attributes
                ):
                    round_trace = current_traceparent()
                envelopes.append(Envelope(event=event, occurred_at=now, traceparent=round_trace))
            else:
                trace = current_traceparent() or round_trace
                envelopes.append(Envelope(event=event, occurred_at=now, traceparent=trace))
        return envelopes
