"""One event loop on one thread per process: it owns the database pool (DESIGN.md §10).

Flask runs every async view on a loop of its own, and an asyncpg pool must stay on the loop that made
it; so views hand their database work to this loop and await the result through a wrapped future.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Coroutine
from concurrent.futures import Future
from typing import Any, Final, TypeVar

T = TypeVar("T")
THREAD_NAME: Final = "fedbus-api-db"

Work = Callable[[], Coroutine[Any, Any, T]]


class LoopThread:
    """A daemon thread running an asyncio loop; `submit` runs coroutines on it from any thread."""

    def __init__(self, name: str = THREAD_NAME) -> None:
        self._loop = asyncio.new_event_loop()
        self._started = threading.Event()
        self._thread = threading.Thread(target=self._main, name=name, daemon=True)

    def start(self) -> None:
        self._thread.start()
        self._started.wait()

    def _main(self) -> None:
        asyncio.set_event_loop(self._loop)
        self._loop.call_soon(self._started.set)
        self._loop.run_forever()
        self._loop.close()

    @property
    def running(self) -> bool:
        return self._thread.is_alive()

    def submit(self, work: Work[T]) -> Future[T]:
        """Create the coroutine on the owning loop (so nothing loop-bound is made elsewhere) and run it."""

        async def owned() -> T:
            return await work()

        return asyncio.run_coroutine_threadsafe(owned(), self._loop)

    async def run(self, work: Work[T]) -> T:
        """Await `work()` run on the owning loop, from a coroutine on any other loop."""
        return await asyncio.wrap_future(self.submit(work))

    def call(self, work: Work[T], timeout: float | None = None) -> T:
        """Block the calling (non-loop) thread until `work()` finished on the owning loop."""
        if threading.current_thread() is self._thread:
            raise RuntimeError("LoopThread.call from its own thread would deadlock")
        return self.submit(work).result(timeout)

    def stop(self) -> None:
        """Stop the loop and wait for the thread; pending work is cancelled."""
        if not self._thread.is_alive():
            return
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)


__all__ = ["THREAD_NAME", "LoopThread"]
