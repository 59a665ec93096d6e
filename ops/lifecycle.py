"""Run an async service until SIGTERM or SIGINT, then let it drain; stop background loops between their
iterations; end a process when its parent ends."""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Coroutine, Sequence
from typing import Any

PR_SET_PDEATHSIG = 1  # from <linux/prctl.h>
PARENT_POLL_S = 1.0  # how often the watchdog (where prctl is not available) looks for its parent


def run_until_signalled(main: Callable[[asyncio.Event], Coroutine[Any, Any, None]]) -> None:
    """`main(stop)` runs until it returns; SIGTERM/SIGINT set `stop` so it can drain and return."""

    async def runner() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await main(stop)

    asyncio.run(runner())


class LoopStop:
    """Ends a background loop between its iterations instead of cancelling it inside one, where it may be in the
    middle of a query: SQLAlchemy logs a traceback ("Exception during reset or similar") for a pooled connection
    whose task was cancelled mid-statement, and a cancel is no reason for one."""

    def __init__(self) -> None:
        self._event = asyncio.Event()

    def set(self) -> None:
        self._event.set()

    def is_set(self) -> bool:
        return self._event.is_set()

    async def sleep(self, seconds: float) -> None:
        """Wait `seconds`, or less once set."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._event.wait(), seconds)


async def stop_tasks(tasks: Sequence[asyncio.Task[Any]], grace: float) -> None:
    """Wait up to `grace` seconds for `tasks` (already told to stop) to end, then cancel what is left."""
    if not tasks:
        return
    _, pending = await asyncio.wait(tasks, timeout=grace)
    for task in pending:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


def die_with_parent(parent_pid: int, sig: signal.Signals) -> None:
    """Have `sig` sent to this process when its parent, `parent_pid`, ends (SIGKILL: die; SIGTERM: drain).

    On Linux the kernel sends it (prctl PR_SET_PDEATHSIG), elsewhere a watchdog thread that polls the
    parent. The kernel signals when the *thread* that started this process ends, so the parent must
    start it from a thread that lives as long as the parent does (an event loop's, or its executor's).
    """
    armed = sys.platform == "linux" and ctypes.CDLL(None).prctl(PR_SET_PDEATHSIG, sig, 0, 0, 0) == 0
    # The parent may have ended before prctl took effect: this process is someone else's child already.
    if os.getppid() != parent_pid:
        os.kill(os.getpid(), sig)
    elif not armed:
        threading.Thread(target=_watch_parent, args=(parent_pid, sig), name="parent-watchdog", daemon=True).start()


def _watch_parent(parent_pid: int, sig: signal.Signals) -> None:
    while os.getppid() == parent_pid:
        time.sleep(PARENT_POLL_S)
    os.kill(os.getpid(), sig)
