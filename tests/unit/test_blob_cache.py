"""The coordinator's model blob cache: one read per digest, shared by concurrent callers, failures not kept."""

from __future__ import annotations

import asyncio

import pytest

from contracts.errors import NotFound
from persistence.in_memory_event_log import InMemoryEventLog
from services.coordinator.blob_cache import BlobCache


class CountingLog(InMemoryEventLog):
    def __init__(self) -> None:
        super().__init__()
        self.reads: list[str] = []

    async def get_blob(self, digest: str) -> bytes:
        self.reads.append(digest)
        await asyncio.sleep(0.01)
        return await super().get_blob(digest)


def test_concurrent_misses_share_one_read_and_hits_read_nothing() -> None:
    async def scenario() -> None:
        log = CountingLog()
        await log.put_blob("a", "model", b"weights-a")
        cache = BlobCache(log)
        results = await asyncio.gather(*(cache.get("a") for _ in range(50)))
        assert results == [b"weights-a"] * 50
        assert await cache.get("a") == b"weights-a"
        assert log.reads == ["a"]

    asyncio.run(scenario())


def test_keeps_only_the_most_recently_used() -> None:
    async def scenario() -> None:
        log = CountingLog()
        for name in "abc":
            await log.put_blob(name, "model", name.encode())
        cache = BlobCache(log, keep=2)
        for name in "abac":  # b is the least recently used when c arrives
            await cache.get(name)
        await cache.get("a")
        await cache.get("b")
        assert log.reads == ["a", "b", "c", "b"]

    asyncio.run(scenario())


def test_a_failed_read_is_not_cached() -> None:
    async def scenario() -> None:
        log = CountingLog()
        cache = BlobCache(log)
        with pytest.raises(NotFound):
            await cache.get("late")
        await log.put_blob("late", "model", b"now here")
        assert await cache.get("late") == b"now here"
        assert log.reads == ["late", "late"]

    asyncio.run(scenario())
