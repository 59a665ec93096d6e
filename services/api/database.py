"""The API's handle on the event log: connected and used only on the process's one LoopThread."""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from contracts.errors import ConfigError
from persistence.sql_engine import async_url
from persistence.sql_event_log import SqlEventLog
from persistence.sql_read_model import SqlReadModel
from services.api.loop_thread import LoopThread

T = TypeVar("T")


@dataclass(frozen=True, slots=True, kw_only=True)
class Store:
    """What database work receives: the log (appends) and its read model."""

    log: SqlEventLog
    reads: SqlReadModel


StoreWork = Callable[[Store], Coroutine[Any, Any, T]]


class ApiDatabase:
    """Starts a LoopThread, connects the log on it, and runs store work there for any thread."""

    def __init__(self, url: str, *, connect_timeout_s: float = 30.0) -> None:
        self._url = async_url(url)  # ConfigError naming database_url for anything unsupported
        self._timeout = connect_timeout_s
        self._loop = LoopThread()
        self._store: Store | None = None

    @property
    def url(self) -> str:
        return self._url

    def start(self) -> ApiDatabase:
        """Start the loop thread and connect (no schema creation: the log belongs to its writers)."""
        if self._url.startswith("sqlite"):
            path = self._url.split(":///", 1)[-1]
            if path and path != ":memory:" and not Path(path).is_file():
                raise ConfigError("database_url", f"no event log at {path}")
        self._loop.start()

        async def connect() -> Store:
            log = await SqlEventLog.connect(self._url, create=False)
            return Store(log=log, reads=log.reads)

        try:
            self._store = self._loop.call(connect, self._timeout)
        except BaseException:
            self._loop.stop()
            raise
        return self

    def _bound(self, work: StoreWork[T]) -> Callable[[], Coroutine[Any, Any, T]]:
        store = self._store
        if store is None:
            raise RuntimeError("ApiDatabase.start() was not called")
        return lambda: work(store)

    async def run(self, work: StoreWork[T]) -> T:
        """Await `work(store)` executed on the owning loop (from an async view's own loop)."""
        return await self._loop.run(self._bound(work))

    def call(self, work: StoreWork[T], timeout: float | None = None) -> T:
        """Run `work(store)` on the owning loop and block until done (sync views, the event stream)."""
        return self._loop.call(self._bound(work), timeout)

    def close(self) -> None:
        """Dispose of the engine on its own loop, then stop the thread."""
        store, self._store = self._store, None
        if store is not None and self._loop.running:
            self._loop.call(store.log.close, self._timeout)
        self._loop.stop()


__all__ = ["ApiDatabase", "Store", "StoreWork"]
