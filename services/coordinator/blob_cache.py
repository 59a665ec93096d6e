"""The few model blobs every download and every upload check needs, kept in memory by digest.

Blobs are content-addressed, so a cached one is never stale. Without this cache each client's model download
and each upload's validation read the whole current model from the event log: at 50 clients of a 1.7M
parameter model that was 50 concurrent 6.6 MB reads per round, and the coordinator's peak memory grew with the
number of clients (benchmarks/scale.py measured it). Concurrent misses on one digest share one read.
"""

from __future__ import annotations

import asyncio
from collections import OrderedDict

from contracts.ports import BlobStore


class BlobCache:
    def __init__(self, log: BlobStore, *, keep: int = 4) -> None:
        self._log = log
        self._keep = keep
        self._blobs: OrderedDict[str, asyncio.Task[bytes]] = OrderedDict()

    async def get(self, digest: str) -> bytes:
        task = self._blobs.get(digest)
        if task is None:
            task = asyncio.ensure_future(self._log.get_blob(digest))
            self._blobs[digest] = task
            while len(self._blobs) > self._keep:
                self._blobs.popitem(last=False)
        else:
            self._blobs.move_to_end(digest)
        try:
            return await asyncio.shield(task)
        except BaseException:
            if task.done() and self._blobs.get(digest) is task:
                del self._blobs[digest]  # a failed read is not cached: the next caller tries again
            raise
