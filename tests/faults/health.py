"""Is the deployment whole again? Consumers counted on the broker directly (not through the proxy),
and process output read from an offset, so a restarted process is judged by what it printed since.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Mapping

import aio_pika
from aio_pika.abc import AbstractRobustConnection
from aio_pika.exceptions import ChannelNotFoundEntity

from tests.support.processes import FedbusProcess, Fleet

REGISTERED = re.compile(r"registered as (c-[0-9a-f]+)")


class ConsumerCensus:
    """Counts the consumers of queues with passive declares on a connection of the test's own."""

    def __init__(self, connection: AbstractRobustConnection) -> None:
        self._connection = connection

    @classmethod
    async def connect(cls, amqp_url: str) -> ConsumerCensus:
        return cls(await aio_pika.connect_robust(amqp_url))

    async def close(self) -> None:
        await self._connection.close()

    async def consumers(self, queue: str) -> int:
        """How many consumers `queue` has now (0 when it does not exist)."""
        return (await self._counts(queue))[0]

    async def messages(self, queue: str) -> int:
        """How many messages wait in `queue` (0 when it does not exist)."""
        return (await self._counts(queue))[1]

    async def _counts(self, queue: str) -> tuple[int, int]:
        channel = await self._connection.channel()
        try:
            declared = await channel.declare_queue(queue, passive=True)
        except ChannelNotFoundEntity:
            return 0, 0
        try:
            result = declared.declaration_result
            return int(result.consumer_count or 0), int(result.message_count or 0)
        finally:
            await channel.close()

    async def missing(self, wanted: Mapping[str, int]) -> dict[str, int]:
        """The queues of `wanted` (queue -> consumers expected) with fewer consumers, and how many they have."""
        found = {queue: await self.consumers(queue) for queue in wanted}
        return {queue: n for queue, n in found.items() if n < wanted[queue]}

    async def until_whole(self, wanted: Mapping[str, int], fleet: Fleet, *, within: float) -> dict[str, int]:
        """Poll until every queue has its consumers; returns what is still missing when `within` ran out."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + within
        while missing := await self.missing(wanted):
            if loop.time() >= deadline or fleet.unexpected_exits():
                return missing
            await asyncio.sleep(0.25)
        return {}


def output_size(process: FedbusProcess) -> int:
    """How many bytes the process's log file holds now (a restart appends to the same file)."""
    try:
        return process.log_path.stat().st_size
    except FileNotFoundError:
        return 0


def output_since(process: FedbusProcess, offset: int) -> str:
    try:
        with process.log_path.open("rb") as handle:
            handle.seek(offset)
            return handle.read().decode(errors="replace")
    except FileNotFoundError:
        return ""


async def line_since(process: FedbusProcess, offset: int, text: str, fleet: Fleet, *, within: float) -> str:
    """The first line holding `text` printed after `offset`; AssertionError (with every tail) otherwise."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    while True:
        for line in output_since(process, offset).splitlines():
            if text in line:
                return line
        if process.returncode is not None or loop.time() >= deadline:
            raise AssertionError(f"{process.name} never printed {text!r} after restarting:\n{fleet.tails()}")
        await asyncio.sleep(0.2)
