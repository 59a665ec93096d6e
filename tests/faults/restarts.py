"""Killed processes come back in the background, like a supervisor would bring them back.

A process counts as starting from its kill until it serves again: the coordinator once it listens on
gRPC, an aggregator once it consumes, a client once it registered (under its old identity) and its queue
has a consumer. Faults that a starting process cannot ride out wait until nothing is starting (see
FaultInjector's envelope).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass

from tests.deployed.world import Deployment
from tests.faults.health import REGISTERED, ConsumerCensus, line_since, output_size

READY_WAIT_S = 120.0  # a restarted process must serve again within this
READY_LINES = {
    "coordinator": "coordinator serving gRPC",
    "aggregator": "aggregator consuming",
    "client": "registered as",
}


@dataclass(slots=True, kw_only=True)
class Cast:
    """The processes of the deployment by name, and the client ids they registered as."""

    coordinator: str
    aggregators: list[str]
    clients: dict[str, str]  # process name -> client id
    queues: dict[str, str]  # process name -> its queue (the name derives from the client's secret)

    def role_of(self, name: str) -> str:
        if name == self.coordinator:
            return "coordinator"
        return "aggregator" if name in self.aggregators else "client"

    def wanted_consumers(self, starting: set[str]) -> dict[str, int]:
        """Queue -> consumers expected from the processes that are not starting."""
        wanted = {self.queues[name]: 1 for name in self.clients if name not in starting}
        wanted["fedbus.aggregator"] = sum(1 for name in self.aggregators if name not in starting)
        if self.coordinator not in starting:
            wanted["fedbus.coordinator"] = 1
        return {queue: n for queue, n in wanted.items() if n}


class Restarts:
    """Background restarts of killed processes; `starting` names the ones not serving yet."""

    def __init__(self, world: Deployment, cast: Cast, census: ConsumerCensus) -> None:
        self._world = world
        self._cast = cast
        self._census = census
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self.identity_lost: list[str] = []

    @property
    def starting(self) -> set[str]:
        return {name for name, task in self._tasks.items() if not task.done()}

    def kill_and_restart(self, name: str, down_s: float, done: Callable[[float], None]) -> None:
        """SIGKILL `name`'s group now; restart it after `down_s` in the background; `done(seconds)` once it serves."""
        self._world.fleet[name].kill()
        self._tasks[name] = asyncio.create_task(self._restart(name, down_s, time.monotonic(), done))

    async def idle(self, *names: str) -> None:
        """Wait until the named processes (every process when none is named) are serving again."""
        tasks = [task for name, task in self._tasks.items() if not names or name in names]
        await asyncio.gather(*tasks)

    def check(self) -> None:
        """Raise the error of a restart that failed (a process that never served again)."""
        for task in self._tasks.values():
            error = task.exception() if task.done() and not task.cancelled() else None
            if error is not None:
                raise error

    async def close(self) -> None:
        for task in self._tasks.values():
            task.cancel()
        await asyncio.gather(*self._tasks.values(), return_exceptions=True)

    async def _restart(self, name: str, down_s: float, killed_at: float, done: Callable[[float], None]) -> None:
        await asyncio.sleep(down_s)
        role = self._cast.role_of(name)
        if role == "client" and self._cast.coordinator in self.starting:
            await self.idle(self._cast.coordinator)  # registering needs the coordinator
        fleet = self._world.fleet
        offset = output_size(fleet[name])
        extra = {"FEDBUS_INSTANCE_NAME": f"{self._world.run_id}-{name}"} if role == "client" else {}
        process = fleet.start(name, role, **extra)
        line = await line_since(process, offset, READY_LINES[role], fleet, within=READY_WAIT_S)
        if role == "client":
            found = REGISTERED.search(line)
            if not found or found.group(1) != self._cast.clients[name]:
                self.identity_lost.append(f"{name}: {line}")
            queue = self._cast.queues[name]
            missing = await self._census.until_whole({queue: 1}, fleet, within=READY_WAIT_S)
            if missing:
                raise AssertionError(f"{name} registered but never consumed {queue}:\n{fleet.tails()}")
        done(time.monotonic() - killed_at)
