"""Model version 0: the task's seeded weights, or a stored model the run starts from (init_model).

A run whose task does not load here, or whose init_model is missing or does not fit the task's model, ends
with RunCompleted naming why: no redelivery can make it start.
"""

from __future__ import annotations

import asyncio
import hashlib
from typing import Any

import numpy as np
import pytest

from contracts.config import RunConfig
from contracts.envelope import Envelope
from contracts.events import ModelInitialized, RunCompleted, RunCreated
from contracts.tensor_codec import decode_tensors, encode_with_manifest
from persistence.in_memory_event_log import InMemoryEventLog
from workers.aggregator.evaluator import PoolEvaluator
from workers.aggregator.worker import AggregatorWorker
from workers.learning.training import initial_weights


async def initialize(config: RunConfig, blob: bytes | None = None) -> tuple[list[Any], InMemoryEventLog]:
    log = InMemoryEventLog()
    if blob is not None:
        await log.put_blob(hashlib.sha256(blob).hexdigest(), "model", blob)
    created = Envelope(event=RunCreated(run_id="r", config=config.to_dict()))
    await log.append("run:r", [created])
    await AggregatorWorker(log, PoolEvaluator(None, None)).handle(created)
    return [r.envelope.event for r in await log.read_stream("run:r")][1:], log


def test_a_run_starts_from_the_tasks_seeded_weights() -> None:
    events, log = asyncio.run(initialize(RunConfig(seed=3)))

    [done] = events
    assert isinstance(done, ModelInitialized) and done.model_version == 0
    weights = decode_tensors(asyncio.run(log.get_blob(done.model_digest)))
    expected = initial_weights("mnist_dp_cnn", seed=3)
    assert all(np.array_equal(weights[k], expected[k]) for k in expected)


def test_a_run_with_an_init_model_starts_from_that_blob() -> None:
    trained = {k: v + 0.5 for k, v in initial_weights("mnist_dp_cnn", seed=0).items()}
    data, manifest = encode_with_manifest(trained)

    events, _ = asyncio.run(initialize(RunConfig(init_model=manifest.digest), data))

    [done] = events
    assert isinstance(done, ModelInitialized) and done.model_digest == manifest.digest


@pytest.mark.parametrize(
    ("config", "stored", "reason"),
    [
        (RunConfig(init_model="0" * 64), None, "init_model_unusable"),  # not in the log
        (RunConfig(init_model=encode_with_manifest({"w": np.zeros(3, np.float32)})[1].digest),
         encode_with_manifest({"w": np.zeros(3, np.float32)})[0], "init_model_unusable"),  # another model's weights
        (RunConfig(task="no_such_module_here:task"), None, "task_unavailable"),
    ],
)  # fmt: skip
def test_a_run_that_cannot_start_ends_saying_why(config: RunConfig, stored: bytes | None, reason: str) -> None:
    events, _ = asyncio.run(initialize(config, stored))

    [ended] = events
    assert isinstance(ended, RunCompleted) and ended.reason == reason and ended.rounds == 0
