"""`fedbus aggregator`: a competing consumer of fedbus.aggregator (RunCreated, QuorumReached)."""

from __future__ import annotations

import asyncio
import logging

from broker.rabbitmq import RabbitBroker
from ops.metrics import FedbusMetrics, serve_metrics
from ops.settings import Settings
from ops.telemetry import shutdown_telemetry
from persistence.sql_event_log import SqlEventLog
from services.deployed.observability import observe
from services.deployed.pool import process_pool, warm_up
from workers.aggregator.evaluator import PoolEvaluator
from workers.aggregator.worker import AggregatorWorker
from workers.learning.training import check_device

log = logging.getLogger("fedbus.aggregator")


async def serve(settings: Settings, stop: asyncio.Event) -> None:
    check_device(settings.device)
    with process_pool(settings.workers, settings.device) as executor:
        await asyncio.to_thread(warm_up, executor, settings.workers)  # before connecting: ready when consuming
        event_log = await SqlEventLog.connect(settings.database_url, create=False)
        observe("aggregator", settings.instance_name, database=True)
        broker = await RabbitBroker.connect(settings.amqp_url, connect_attempts=30)
        metrics = FedbusMetrics()
        serve_metrics(metrics, settings.metrics_port)
        worker = AggregatorWorker(event_log, PoolEvaluator(executor, settings.data_dir), metrics=metrics)
        consumer = await broker.consume("fedbus.aggregator", worker.handle, prefetch=1)
        log.info("aggregator consuming fedbus.aggregator")
        try:
            await stop.wait()
            log.info("aggregator draining")
        finally:
            await consumer.cancel()
            await broker.close()
            await event_log.close()
            shutdown_telemetry()
