"""Carries out the planned faults on a running deployment, paced by the run's progress.

Faults overlap: a killed process comes back in the background while the next faults go in. The
envelope keeps out only what a process cannot survive while it starts (reported to the lead as a
finding): its first broker connection gives up after ~3 s, so a cut lasts at most STARTING_CUT_S while
anything is starting, and a client's registration gives up after a few tries, so no coordinator kill
while a client is starting. At most one instance of each process is down at a time.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import asyncpg

from contracts.events import Event, RoundAggregated
from tests.deployed.world import Deployment, RunLog
from tests.faults.health import ConsumerCensus
from tests.faults.proxy_thread import ProxyThread
from tests.faults.restarts import Cast, Restarts
from tests.faults.schedule import FaultKind, PlannedFault
from tests.faults.triggers import completed, current_round, fired

TRIGGER_WAIT_S = 8.0  # a trigger that does not come within this fires the fault anyway
ENVELOPE_WAIT_S = 150.0  # restarts must let the next fault in within this
WHOLE_WAIT_S = 60.0  # every consumer must be back within this after a cut or a terminated session
FAULTS_PER_ROUND = 4  # the pace: behind it, the next fault skips its gap
# A starting process gives its first broker connection ~3 s of retries (broker/connection.py: 5 attempts,
# 0.2 s doubling): while one starts, a cut lasts at most this long.
STARTING_CUT_S = 2.0


@dataclass(slots=True, kw_only=True)
class FaultRecord:
    """What one fault hit and how the deployment came back from it."""

    index: int
    kind: str
    trigger: str
    triggered: bool  # the trigger's moment came (False: fired after TRIGGER_WAIT_S anyway)
    target: str
    at_s: float  # since the storm began
    round: int | None
    down_s: float
    events_at_fault: int
    detail: str = ""
    recovered: bool = False  # restarted and serving / every consumer back
    recovered_s: float | None = None  # from the fault until then
    survived: bool = False  # recovered, and the run went on to complete after it (set at the end)
    missing: dict[str, int] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    def back(self, seconds: float) -> None:
        self.recovered, self.recovered_s = True, round(seconds, 2)


def rounds_aggregated(events: list[Event]) -> int:
    return len({e.round for e in events if isinstance(e, RoundAggregated)})


class FaultInjector:
    def __init__(
        self,
        world: Deployment,
        proxy: ProxyThread,
        census: ConsumerCensus,
        cast: Cast,
        *,
        pg_admin_dsn: str,
        database: str,
    ) -> None:
        self._world = world
        self._proxy = proxy
        self._census = census
        self._cast = cast
        self._pg_admin_dsn = pg_admin_dsn
        self._database = database
        self.restarts = Restarts(world, cast, census)
        self._t0 = time.monotonic()
        self._injected = 0

    async def inject_next(self, pending: list[PlannedFault], log: RunLog) -> FaultRecord | None:
        """Pace, take the first pending fault the envelope lets in, wait for its trigger and strike.

        None when the run completed first. The fault taken is removed from `pending`.
        """
        behind = self._injected < FAULTS_PER_ROUND * (rounds_aggregated(await log.events()) + 1)
        await asyncio.sleep(0.3 if behind or not pending else pending[0].gap_s)

        def admissible() -> PlannedFault | None:
            return next((f for f in pending if self._target(f) is not None), None)

        if not await self._until(lambda: admissible() is not None, ENVELOPE_WAIT_S, log):
            raise AssertionError(f"no fault of {[f.kind.value for f in pending]} let in by {self.restarts.starting}")
        fault = admissible()
        assert fault is not None
        pending.remove(fault)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + (TRIGGER_WAIT_S / 3 if behind else TRIGGER_WAIT_S)
        while not fired(fault.trigger, events := await log.events()) and loop.time() < deadline:
            if completed(events):
                return None
            self._check(log)
            await asyncio.sleep(0.1)
        triggered = fired(fault.trigger, events)
        await asyncio.sleep(fault.delay_s / 3 if behind else fault.delay_s)
        events = await log.events()
        target = self._target(fault)
        if completed(events) or target is None:
            return None
        self._injected += 1
        record = FaultRecord(
            index=fault.index,
            kind=fault.kind.value,
            trigger=fault.trigger.value,
            triggered=triggered,
            target=target,
            at_s=round(time.monotonic() - self._t0, 2),
            round=current_round(events),
            down_s=round(fault.down_s, 2),
            events_at_fault=len(events),
        )
        await self._strike(fault, record)
        return record

    def _target(self, fault: PlannedFault) -> str | None:
        """Who the fault hits, or None while the envelope keeps it out."""
        starting = self.restarts.starting
        if fault.kind is FaultKind.BROKER_CUT:
            return "rabbitmq"
        if fault.kind is FaultKind.DB_TERMINATE:
            return "postgresql"
        if fault.kind is FaultKind.COORDINATOR_KILL:
            blocked = self._cast.coordinator in starting or any(c in starting for c in self._cast.clients)
            return None if blocked else self._cast.coordinator
        names = self._cast.aggregators if fault.kind is FaultKind.AGGREGATOR_KILL else sorted(self._cast.clients)
        up = [name for name in names if name not in starting]
        if not up:
            return None
        choice = names[fault.target % len(names)]
        return choice if choice in up else up[fault.target % len(up)]

    async def _strike(self, fault: PlannedFault, record: FaultRecord) -> None:
        if fault.kind in (FaultKind.COORDINATOR_KILL, FaultKind.AGGREGATOR_KILL, FaultKind.CLIENT_KILL):
            self.restarts.kill_and_restart(record.target, fault.down_s, record.back)
            role = self._cast.role_of(record.target)
            record.detail = "kill -9, restarted" + (" with its instance name" if role == "client" else "")
            return
        started = time.monotonic()
        if fault.kind is FaultKind.BROKER_CUT:
            starting = self.restarts.starting
            down = min(fault.down_s, STARTING_CUT_S) if starting else fault.down_s
            self._proxy.cut()
            await asyncio.sleep(down)
            self._proxy.restore()
            record.down_s = round(down, 2)
            record.detail = f"every AMQP connection cut, refused for {down:.1f}s"
            if down < fault.down_s:
                record.detail += f" (not {fault.down_s:.1f}s: {', '.join(sorted(starting))} starting)"
        else:
            record.detail = f"{await self._terminate_sessions()} sessions terminated"
        wanted = self._cast.wanted_consumers(self.restarts.starting)
        record.missing = await self._census.until_whole(wanted, self._world.fleet, within=WHOLE_WAIT_S)
        if not record.missing:
            record.back(time.monotonic() - started)

    async def _until(self, allowed: Callable[[], bool], within: float, log: RunLog) -> bool:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + within
        while not allowed():
            self._check(log)
            if loop.time() >= deadline:
                return False
            await asyncio.sleep(0.2)
        return True

    def _check(self, log: RunLog) -> None:
        """Fail now, with every process's output, when a restart failed or a process died by itself."""
        self.restarts.check()
        died = self._world.fleet.unexpected_exits()
        if died:
            raise AssertionError(f"{'; '.join(died)}\n{self._world.fleet.tails()}")

    async def _terminate_sessions(self) -> int:
        connection = await asyncpg.connect(self._pg_admin_dsn)
        try:
            terminated = await connection.fetchval(
                "SELECT count(*) FILTER (WHERE pg_terminate_backend(pid)) FROM pg_stat_activity"
                " WHERE datname = $1 AND pid <> pg_backend_pid()",
                self._database,
            )
        finally:
            await connection.close()
        return int(terminated or 0)
