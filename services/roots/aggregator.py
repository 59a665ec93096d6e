"""The aggregator's composition root: a competing consumer of fedbus.aggregator (RunCreated, QuorumReached).

`fedbus aggregator` builds it from settings with a process pool of its own; `fedbus run` passes its log,
broker and pool.
"""

from __future__ import annotations

import asyncio
import logging
from concurrent.futures import Executor
from dataclasses import dataclass

from broker.broker_url import Broker
from broker.topology import AGGREGATOR_QUEUE
from contracts.ports import Consumption, EventLog
from ops.metrics import FedbusMetrics, serve_metrics
from ops.settings import Settings
from ops.telemetry import shutdown_telemetry
from services.roots.adapters import Closable, close_owned, log_and_broker
from services.roots.observability import observe
from services.roots.pool import process_pool, warm_up
from workers.aggregator.evaluator import PoolEvaluator
from workers.aggregator.worker import AggregatorWorker
from workers.learning.training import check_device

log = logging.getLogger("fedbus.aggregator")


@dataclass(slots=True, kw_only=True)
class AggregatorApp:
    worker: AggregatorWorker
    log: EventLog
    broker: Broker
    owns: tuple[Closable, ...] = ()
    _consumer: Consumption | None = None

    async def start(self) -> None:
        self._consumer = await self.broker.consume(AGGREGATOR_QUEUE, self.worker.handle, prefetch=1)
        log.info("aggregator consuming %s", AGGREGATOR_QUEUE)

    async def stop(self) -> None:
        if self._consumer is not None:
            await self._consumer.cancel()
        await close_owned(self.owns)


async def build(
    settings: Settings,
    *,
    executor: Executor,
    log: EventLog | None = None,
    broker: Broker | None = None,
    metrics: FedbusMetrics | None = None,
) -> AggregatorApp:
    """The aggregator for `settings`, evaluating in `executor`; adapters given here are not closed by `stop`."""
    log, broker, owns = await log_and_broker(settings, log, broker)
    worker = AggregatorWorker(log, PoolEvaluator(executor, settings.data_dir), metrics=metrics)
    return AggregatorApp(worker=worker, log=log, broker=broker, owns=owns)


async def serve(settings: Settings, stop: asyncio.Event) -> None:
    """`fedbus aggregator`: consume until `stop`, then drain."""
    check_device(settings.device)
    with process_pool(settings.workers, settings.device) as executor:
        await asyncio.to_thread(warm_up, executor, settings.workers)  # before connecting: ready when consuming
        observe("aggregator", settings.instance_name, database=True)
        metrics = FedbusMetrics()
        app = await build(settings, executor=executor, metrics=metrics)
        # The log connects on first use: read once now, so that a database refusing this user (or without
        # the schema) stops the aggregator at start rather than failing every message it takes.
        await app.log.read_all(limit=1)
        serve_metrics(metrics, settings.metrics_port)
        await app.start()
        try:
            await stop.wait()
            log.info("aggregator draining")
        finally:
            await app.stop()
            shutdown_telemetry()
