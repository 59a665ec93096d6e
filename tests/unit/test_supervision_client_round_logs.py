"""A client tells each round at INFO: selected or not, trained in how long with which epsilon, uploaded, declined.

With the recording transport and trainer of the client worker's unit tests (no network, no torch training).
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import re

import pytest

from contracts.envelope import Envelope
from tests.unit.workers.test_client_worker import round_started, worker

LOGGER = "workers.client.worker"


def messages(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == LOGGER and r.levelno == logging.INFO]


def test_a_selected_client_logs_selection_training_and_upload(caplog: pytest.LogCaptureFixture) -> None:
    client, _, _ = worker()
    caplog.set_level(logging.INFO, logger=LOGGER)

    asyncio.run(client.handle(round_started(1)))

    said = messages(caplog)
    assert said[0] == "client c-1: selected for round 1 (attempt 1) of r"
    assert re.fullmatch(
        r"client c-1: trained round 1 in \d+\.\d s, \d+ steps on 500 samples \(epsilon \d+\.\d{3}\)", said[1]
    )
    assert re.fullmatch(r"client c-1: uploaded round 1 \(\d+ bytes\)", said[2])
    assert len(said) == 3


def test_a_client_not_selected_says_so(caplog: pytest.LogCaptureFixture) -> None:
    client, transport, _ = worker()
    caplog.set_level(logging.INFO, logger=LOGGER)
    others = Envelope(event=dataclasses.replace(round_started(1).event, selected=("c-2",)))

    asyncio.run(client.handle(others))

    assert messages(caplog) == ["client c-1: round 1 of r started without it"]
    assert transport.uploads == []


def test_a_client_that_declines_a_round_logs_why(caplog: pytest.LogCaptureFixture) -> None:
    client, transport, _ = worker()
    caplog.set_level(logging.INFO, logger=LOGGER)

    async def rounds() -> None:
        for r in (1, 2, 3):
            await client.handle(round_started(r, epsilon=0.5))

    asyncio.run(rounds())

    assert transport.declines == [("r", 3, "privacy_budget")]
    assert re.fullmatch(r"client c-1 declines round 3: epsilon would reach \d+\.\d{3}", messages(caplog)[-1])
