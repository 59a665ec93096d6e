"""The few model blobs every download and every upload check needs, kept in memory by digest.

Blobs are content-addressed, so a cached one is never stale. Without this cache each client's model download
and each upload's validation read the whole current model from the event log: at 50 clients of a 1.7M
parameter model that was 50 concurrent 6.6 MB reads per round, and the coordinator's peak memory grew with the
number of clients (benchmarks/scale.py measured it). Concurrent misses on one digest share one read.
"""

from __future__ import annotations

import asyncio
from collections import OrderedDict
from collections.abc import Callable
from typing import Generic, TypeVar

from contracts.ports import BlobStore

K = TypeVar("K")
V = TypeVar("V")


class Recent(Generic[K, V]):
    """At most `keep` values by key; the least recently used goes first."""

    def __init__(self, keep: int) -> None:
        self._keep = keep
        self._items: OrderedDict[K, V] = OrderedDict()

    def get(self, key: K, make: Callable[[], V]) -> V:
        """The value kept for `key`, or `make()`'s, kept from now on."""
        value = self._items.get(key)
        if value is None:
            value = self._items[key] = make()
            while len(self._items) > self._keep:
                self._items.popitem(last=False)
        else:
            self._items.move_to_end(key)
        return value

    def discard(self, key: K, value: V) -> None:
        """Forget `key` if it still holds `value`."""
        if self._items.get(key) is value:
            del self._items[key]


class BlobCache:
    def __init__(self, log: BlobStore, *, keep: int = 4) -> None:
        self._log = log
        self._blobs: Recent[str, asyncio.Task[bytes]] = Recent(keep)

    async def get(self, digest: str) -> bytes:
        task = self._blobs.get(digest, lambda: asyncio.ensure_future(self._log.get_blob(digest)))
        try:
            return await asyncio.shield(task)
        except BaseException:
            if task.done():
                self._blobs.discard(digest, task)  # a failed read is not cached: the next caller tries again
            raise
