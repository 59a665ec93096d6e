"""Run an async service until SIGTERM or SIGINT, then let it drain; end a process when its parent ends."""

from __future__ import annotations

import asyncio
import ctypes
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Coroutine
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
