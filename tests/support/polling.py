"""Eventual assertions: poll a probe until a predicate holds or a deadline passes (never bare sleeps)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import TypeVar

T = TypeVar("T")


async def eventually(
    probe: Callable[[], Awaitable[T]],
    until: Callable[[T], bool],
    *,
    within: float = 10.0,
    interval: float = 0.02,
) -> T:
    """The first value of `probe()` that satisfies `until`; AssertionError with the last value on timeout."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    while True:
        value = await probe()
        if until(value):
            return value
        if loop.time() >= deadline:
            raise AssertionError(f"condition not met within {within}s; last value: {value!r}")
        await asyncio.sleep(interval)
