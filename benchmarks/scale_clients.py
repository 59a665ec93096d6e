"""The scale benchmark's client host: N real client workers in one process, with tiny synthetic local work.

`python -m benchmarks.scale_clients --count N --timings FILE` registers N clients over gRPC with the
enrollment token (FEDBUS_* settings, as `fedbus client`), gives each its own RabbitMQ queue on one shared
connection, and lets the product's `ClientWorker` handle every RoundStarted: model download over gRPC,
compression, streamed upload. Only the local training is replaced: `SyntheticTrainer` returns a
deterministic perturbation of the weights in a few milliseconds, so that what the benchmark measures is the
orchestration, and the slowest client's "training" is recorded per round to subtract it. On SIGTERM the
host writes those durations to FILE as JSON: {"<round>": [seconds, ...]}.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import time
from collections import defaultdict
from pathlib import Path

import numpy as np

from broker.rabbitmq import RabbitBroker
from contracts.envelope import Envelope
from contracts.events import RoundStarted
from contracts.ports import Handler
from contracts.tensors import TensorDict, TensorMapping
from contracts.uploads import ClientCapabilities
from fedbus.data import DataRequest
from ops.clock import SystemClock
from ops.lifecycle import run_until_signalled
from ops.settings import Settings
from workers.client.trainer import PoolTrainer
from workers.client.transport import FederationClient
from workers.client.worker import ClientWorker
from workers.learning.local_round import LocalTrainConfig, LocalTrainResult

log = logging.getLogger("fedbus.bench.scale")


SAMPLES = 600  # what each synthetic client reports it trained on


class SyntheticTrainer(PoolTrainer):
    """Local work of a few milliseconds: the delta is a fixed random direction scaled per client and round."""

    def __init__(self, index: int, timings: dict[int, list[float]]) -> None:
        super().__init__(None)
        self._index = index
        self._timings = timings
        self._directions: dict[str, np.ndarray] = {}
        self.round = 0  # set by `_handler` before the worker sees the event (one event at a time: prefetch 1)

    async def prepare(self, task: str, request: DataRequest, *, private: bool) -> int:
        return SAMPLES  # no data is read: the deltas are synthetic

    async def train(
        self, base: TensorMapping, request: DataRequest, config: LocalTrainConfig, ledger: dict[str, object] | None
    ) -> LocalTrainResult:
        started = time.perf_counter()
        rng = np.random.default_rng(config.seed)
        scale = np.float32(1e-3 * (1.0 + 0.01 * self._index))
        delta: TensorDict = {}
        for name, tensor in base.items():
            array = np.asarray(tensor)
            if name not in self._directions:
                self._directions[name] = rng.standard_normal(array.shape).astype(np.float32)
            delta[name] = self._directions[name] * scale
        self._timings[self.round].append(time.perf_counter() - started)
        return LocalTrainResult(delta=delta, num_samples=SAMPLES, steps=1, metrics={"train_loss": 0.0})


def _handler(worker: ClientWorker, trainer: SyntheticTrainer) -> Handler:
    async def handle(envelope: Envelope) -> None:
        if isinstance(envelope.event, RoundStarted):
            trainer.round = envelope.event.round
        await worker.handle(envelope)

    return handle


async def _serve(settings: Settings, count: int, timings_file: Path, stop: asyncio.Event) -> None:
    settings.require("ENROLLMENT_TOKEN")
    timings: dict[int, list[float]] = defaultdict(list)
    transports = [FederationClient(settings.grpc_address, attempts=12, deadline_s=300.0) for _ in range(count)]
    capabilities = ClientCapabilities(device="cpu", cores=1, hostname="scale-host")
    registrations = await asyncio.gather(
        *(t.register(settings.enrollment_token, capabilities, f"scale-{i}") for i, t in enumerate(transports))
    )
    log.info("registered %s clients", count)
    broker = await RabbitBroker.connect(settings.amqp_url, connect_attempts=30, declare_topology=False)
    consumers = []
    try:
        for i, (transport, registration) in enumerate(zip(transports, registrations, strict=True)):
            trainer = SyntheticTrainer(i, timings)
            worker = ClientWorker(
                transport,
                trainer,
                registration,
                data_dir=settings.data_dir,
                clock=SystemClock(),
                share=(i, count),
            )
            queue = await broker.ensure_client_queue(registration.client_id)
            consumers.append(await broker.consume(queue, _handler(worker, trainer), prefetch=1))
        await stop.wait()
    finally:
        for consumer in consumers:
            await consumer.cancel()
        await broker.close()
        await asyncio.gather(*(t.close() for t in transports))
        timings_file.write_text(json.dumps({str(k): v for k, v in sorted(timings.items())}))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--count", type=int, required=True)
    parser.add_argument("--timings", type=Path, required=True)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    settings = Settings.from_env()
    run_until_signalled(lambda stop: _serve(settings, args.count, args.timings, stop))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
