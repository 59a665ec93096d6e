"""The processes of `fedbus up`: output prefixed with their name, restarted with backoff when they die.

Each process leads a session of its own, so whatever it leaves behind when it dies (a pool that could
not follow it) is killed with its process group. Its output comes through a pipe this module owns rather
than asyncio's: on Python 3.11 `Process.wait()` also waits for asyncio's pipes to close, so a descendant
that kept one open would keep `fedbus up` waiting after its run ended.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import time
from collections.abc import Sequence
from dataclasses import dataclass

from rich.console import Console
from rich.text import Text

EXIT_USAGE = 2  # a role's configuration error: restarting cannot help
DRAIN_S = 2.0  # how long `stop` still copies output once the processes are gone
STOP_GRACE_S = 20.0  # how long a process may drain after SIGTERM before it is killed
LINE_LIMIT = 1 << 20  # longer output lines are dropped (and said so), not left to stop the copying


class FleetFailed(Exception):
    """A process died and was not restarted (a configuration error, or the restart limit reached)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class RestartPolicy:
    """Restarts per process, after an exponential delay (1 s, 2 s, 4 s, ... at most `max_delay_s`)."""

    limit: int = 3
    first_delay_s: float = 1.0
    max_delay_s: float = 10.0

    def delay(self, attempt: int) -> float:
        return min(self.max_delay_s, self.first_delay_s * 2.0 ** (attempt - 1))


def describe_exit(code: int) -> str:
    """`exit 1`, or `exit -9 (SIGKILL)` for a process a signal ended."""
    if code < 0:
        with contextlib.suppress(ValueError):
            return f"exit {code} ({signal.Signals(-code).name})"
    return f"exit {code}"


def _kill_group(pgid: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signal.SIGKILL)


class Fleet:
    """Named processes under one restart policy; `failure` says why the fleet gave up, if it did."""

    def __init__(self, console: Console, policy: RestartPolicy) -> None:
        self._console = console
        self._policy = policy
        self._commands: dict[str, tuple[Sequence[str], dict[str, str]]] = {}
        self.processes: dict[str, asyncio.subprocess.Process] = {}
        self._supervisors: list[asyncio.Task[None]] = []
        self._pumps: set[asyncio.Task[None]] = set()
        self._stopping = False
        self.failure: str | None = None

    async def start(self, name: str, argv: Sequence[str], env: dict[str, str]) -> None:
        """Start `argv` as `name`, and start it again whenever it dies, as the policy allows."""
        self._commands[name] = (argv, env)
        await self._spawn(name)
        self._supervisors.append(asyncio.create_task(self._supervise(name)))

    async def _spawn(self, name: str) -> None:
        argv, env = self._commands[name]
        read_end, write_end = os.pipe()
        try:
            process = await asyncio.create_subprocess_exec(
                *argv, env=env, stdin=asyncio.subprocess.DEVNULL, stdout=write_end, stderr=write_end,
                start_new_session=True,
            )  # fmt: skip
        except BaseException:
            os.close(read_end)
            raise
        finally:
            os.close(write_end)
        self.processes[name] = process
        self._pumps.add(asyncio.create_task(self._pump(name, read_end)))

    async def _pump(self, name: str, read_end: int) -> None:
        """Copy the lines of `read_end` until every writer closed it, or until cancelled."""
        reader = asyncio.StreamReader(limit=LINE_LIMIT)
        loop = asyncio.get_running_loop()
        pipe = os.fdopen(read_end, "rb", buffering=0)  # the transport owns it: closed with it
        transport, _ = await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), pipe)
        try:
            while True:
                try:
                    line = await reader.readline()
                except ValueError:  # past LINE_LIMIT: the reader dropped it
                    self.say(name, f"(a line longer than {LINE_LIMIT} bytes, not shown)")
                    continue
                if not line:
                    return
                self.say(name, line.decode(errors="replace").rstrip())
        finally:
            transport.close()

    def say(self, name: str, line: str) -> None:
        """One output line for `name`, taken as plain text (a `[` in it is no markup)."""
        self._console.print(Text.assemble((f"[{name}] ", "dim"), line), highlight=False, soft_wrap=True)

    async def _supervise(self, name: str) -> None:
        for attempt in range(1, self._policy.limit + 2):
            process = self.processes[name]
            code = await process.wait()
            _kill_group(process.pid)
            if self._stopping:
                return
            if code == EXIT_USAGE:
                self._give_up(f"{name} exited {code} (a configuration error, see its output): not restarting it")
                return
            if attempt > self._policy.limit:
                self._give_up(f"{name} ended with {describe_exit(code)} after {self._policy.limit} restarts: giving up")
                return
            delay = self._policy.delay(attempt)
            limit = self._policy.limit
            self.say(
                "fedbus up", f"{name} ended with {describe_exit(code)}: restart {attempt} of {limit} in {delay:g} s"
            )
            await asyncio.sleep(delay)
            await self._spawn(name)

    def _give_up(self, reason: str) -> None:
        self.say("fedbus up", reason)
        if self.failure is None:
            self.failure = reason

    async def stop(self, grace_s: float = STOP_GRACE_S, drain_s: float = DRAIN_S) -> None:
        """SIGTERM every process, SIGKILL what did not drain within `grace_s`, then whatever it left behind."""
        self._stopping = True
        for supervisor in self._supervisors:
            supervisor.cancel()
        await asyncio.gather(*self._supervisors, return_exceptions=True)
        for process in self.processes.values():
            if process.returncode is None:
                process.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + grace_s
        for process in self.processes.values():
            try:
                await asyncio.wait_for(process.wait(), max(0.1, deadline - time.monotonic()))
            except TimeoutError:
                _kill_group(process.pid)
                await process.wait()
            _kill_group(process.pid)
        await self._drain(drain_s)

    async def _drain(self, drain_s: float) -> None:
        """Copy what is left of the output for up to `drain_s`: a descendant that left the process group may
        hold a pipe open, and its output is not worth waiting for."""
        if not self._pumps:
            return
        _, pending = await asyncio.wait(self._pumps, timeout=drain_s)
        for pump in pending:
            pump.cancel()
        await asyncio.gather(*self._pumps, return_exceptions=True)
