"""A TcpProxy on an event loop of its own thread: it keeps forwarding while the test blocks or sleeps."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

from tests.support.tcp_proxy import TcpProxy

T = TypeVar("T")


class ProxyThread:
    """`TcpProxy(host, port)` served from a daemon thread; cut/restore are safe to call from any thread."""

    def __init__(self, target_host: str, target_port: int, *, listen_host: str = "127.0.0.1") -> None:
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="fault-proxy", daemon=True)
        self._proxy = TcpProxy(target_host, target_port, listen_host=listen_host)
        self.cuts = 0

    def start(self) -> int:
        """Start the thread and the listener; returns the proxy's port on the listen host."""
        self._thread.start()
        return self._call(self._proxy.start())

    def cut(self) -> None:
        """Drop every proxied connection and refuse new ones until `restore`."""
        self.cuts += 1
        self._call(_run(self._proxy.cut))

    def restore(self) -> None:
        self._call(_run(self._proxy.restore))

    def stop(self) -> None:
        """Close the listener and connections, then the loop and its thread."""
        if self._thread.is_alive():
            self._call(self._proxy.stop())
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(timeout=10)
        self._loop.close()

    def _call(self, coro: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout=30)


async def _run(action: Callable[[], None]) -> None:
    action()
