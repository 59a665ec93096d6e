"""The client worker's decisions, with a recording transport and trainer (no network, no torch training)."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest

from broker.disposition import Disposition, settle
from contracts.envelope import Envelope
from contracts.errors import CodecError
from contracts.event_codec import encode_envelope
from contracts.events import DECLINE_TOO_LATE, RoundStarted
from contracts.tensor_codec import encode_with_manifest
from fedbus import DataRequest, DataUnavailable, TaskError
from workers.client.ledger_store import LedgerStore
from workers.client.trainer import PoolTrainer
from workers.client.transport import Registration
from workers.client.worker import ClientWorker
from workers.learning.local_round import LocalTrainConfig, LocalTrainResult
from workers.learning.privacy import PrivacyLedger, plan_privacy

MODEL = {"w": np.zeros((2, 2), dtype=np.float32)}
DATA, MANIFEST = encode_with_manifest(MODEL)


class RecordingTransport:
    def __init__(self) -> None:
        self.declines: list[tuple[str, int, str]] = []
        self.uploads: list[Any] = []

    async def download_model(self, run_id: str, version: int, digest: str, round_: int = 0) -> bytes:
        return DATA

    async def upload(self, header: Any, payload: bytes) -> None:
        self.uploads.append(header)

    async def decline(self, run_id: str, round_: int, reason: str) -> None:
        self.declines.append((run_id, round_, reason))


class FixedTrainer(PoolTrainer):
    """500 training samples (the simulated half of train_limit 1000), or `failure` when preparing; privacy is
    planned and accounted by PoolTrainer's own functions, in threads."""

    def __init__(self, failure: Exception | None = None) -> None:
        super().__init__(None)
        self.calls: list[LocalTrainConfig] = []
        self.requests: list[DataRequest] = []
        self.failure = failure

    async def prepare(self, task: str, request: DataRequest, *, private: bool) -> int:
        self.requests.append(request)
        if self.failure is not None:
            raise self.failure
        return 500

    async def train(self, base: Any, request: Any, config: LocalTrainConfig, ledger: Any) -> LocalTrainResult:
        self.calls.append(config)
        spent = PrivacyLedger.from_dict(ledger) if ledger else PrivacyLedger()
        # Spend what the plan says one round costs (sample rate and steps of the client's 500 samples).
        plan = plan_privacy(
            target_epsilon=3.0,
            delta=1e-5,
            num_samples=500,
            batch_size=config.batch_size,
            epochs_per_round=1,
            rounds=2,
        )
        spent.record(config.noise_multiplier or 1.0, plan.sample_rate, plan.steps_per_round)
        return LocalTrainResult(
            delta={"w": np.full((2, 2), 0.1, dtype=np.float32)}, num_samples=500, steps=100,
            metrics={"loss": 1.0}, ledger=spent.to_dict(), epsilon=spent.epsilon(1e-5),
        )  # fmt: skip


class Clock:
    def __init__(self, now: float = 0.0) -> None:
        self._now = now

    def now(self) -> float:
        return self._now


def round_started(round_: int, *, epsilon: float = 3.0, **changes: object) -> Envelope:
    train: dict[str, Any] = {
        "task": "mnist_dp_cnn", "partition": "iid", "seed": 0, "rounds": 2,
        "epochs": 1, "batch_size": 64, "lr": 0.1, "momentum": 0.0, "compression": "int8", "train_limit": 1000,
        "privacy": {"enabled": True, "epsilon": epsilon, "delta": 1e-5, "max_grad_norm": 1.0},
    } | changes  # fmt: skip
    event = RoundStarted(
        run_id="r", round=round_, attempt=1, model_version=round_ - 1, model_digest=MANIFEST.digest,
        selected=("c-1",), deadline=10.0, train=train,
    )  # fmt: skip
    return Envelope(event=event)


def worker(
    ledgers: LedgerStore | None = None,
    *,
    failure: Exception | None = None,
    client_data: Path | None = None,
    now: float = 0.0,
) -> tuple[ClientWorker, RecordingTransport, FixedTrainer]:
    transport, trainer = RecordingTransport(), FixedTrainer(failure)
    registration = Registration(client_id="c-1", token="t")
    client = ClientWorker(
        transport,
        trainer,
        registration,
        data_dir=None,
        clock=Clock(now),
        ledgers=ledgers,
        client_data=client_data,
        share=None if client_data else (0, 2),  # type: ignore[arg-type]
    )
    return client, transport, trainer


def test_a_selected_client_trains_with_the_planned_noise_and_uploads() -> None:
    client, transport, trainer = worker()

    asyncio.run(client.handle(round_started(1)))

    plan = plan_privacy(target_epsilon=3.0, delta=1e-5, num_samples=500, batch_size=64, epochs_per_round=1, rounds=2)
    assert len(transport.uploads) == 1 and transport.uploads[0].epsilon > 0
    assert trainer.calls[0].dp and abs(trainer.calls[0].noise_multiplier - plan.noise_multiplier) < 1e-9


def test_a_redelivered_round_is_not_trained_twice() -> None:
    client, transport, _ = worker()

    async def twice() -> None:
        await client.handle(round_started(1))
        await client.handle(round_started(1))

    asyncio.run(twice())

    assert len(transport.uploads) == 1


def test_work_that_arrives_past_its_deadline_is_declined_as_too_late_without_training() -> None:
    """Answered rather than dropped: under FedBuff the client's assignment ends with the answer; dropped, it
    counted as still training until it went stale, and a buffer waiting only on it waited for its deadline."""
    client, transport, trainer = worker(now=11.0)  # round_started's deadline is 10.0

    asyncio.run(client.handle(round_started(1)))

    assert transport.declines == [("r", 1, DECLINE_TOO_LATE)] and trainer.calls == [] and transport.uploads == []


class RefusingTransport(RecordingTransport):
    def __init__(self, code: grpc.StatusCode) -> None:
        super().__init__()
        self.code = code

    async def upload(self, header: Any, payload: bytes) -> None:
        raise grpc.aio.AioRpcError(self.code, grpc.aio.Metadata(), grpc.aio.Metadata(), "refused")


@pytest.mark.parametrize(
    ("code", "level"),
    [(grpc.StatusCode.FAILED_PRECONDITION, logging.INFO), (grpc.StatusCode.INVALID_ARGUMENT, logging.WARNING)],
)
def test_an_upload_refused_because_the_round_closed_is_no_warning_but_a_refused_update_is(
    code: grpc.StatusCode, level: int, caplog: pytest.LogCaptureFixture
) -> None:
    client, _, trainer = worker()
    client._transport = RefusingTransport(code)  # type: ignore[assignment]

    with caplog.at_level(logging.INFO, logger="workers.client.worker"):
        asyncio.run(client.handle(round_started(1)))  # handled: the next round will come

    assert len(trainer.calls) == 1
    assert [r.levelno for r in caplog.records if "refused" in r.getMessage()] == [level]


def test_a_client_declines_a_round_that_would_pass_its_budget() -> None:
    client, transport, trainer = worker()

    async def rounds() -> None:
        for r in (1, 2, 3):
            await client.handle(round_started(r, epsilon=0.5))

    asyncio.run(rounds())

    assert len(trainer.calls) == 2, "the two planned rounds fit the budget"
    assert transport.declines == [("r", 3, "privacy_budget")], (
        "the third would pass it: the ledger carried across rounds"
    )


def test_a_malformed_plan_is_refused_naming_the_field_and_dead_lettered() -> None:
    client, transport, trainer = worker()
    bad = round_started(1, batch_size="64")

    async def deliveries() -> Disposition:
        with pytest.raises(CodecError, match=r"^train\.batch_size: "):
            await client.handle(bad)
        disposition = await settle(client.handle, encode_envelope(bad), message_id="m", queue="q")
        await client.handle(round_started(1))  # the worker is still there, and nothing of the bad plan stuck
        return disposition

    disposition = asyncio.run(deliveries())

    assert disposition is Disposition.DEAD_LETTER
    assert len(trainer.calls) == 1 and len(transport.uploads) == 1 and transport.declines == []


def test_a_client_without_its_data_declines_instead_of_failing() -> None:
    client, transport, trainer = worker(failure=DataUnavailable("dataset 'mnist' not found in /nowhere"))

    asyncio.run(client.handle(round_started(1)))

    assert transport.declines == [("r", 1, "data_unavailable")] and trainer.calls == []


def test_a_client_whose_task_does_not_load_declines_and_tries_again_next_round() -> None:
    client, transport, trainer = worker(failure=TaskError("task my.tasks:t: cannot import my.tasks"))

    async def rounds() -> None:
        await client.handle(round_started(1))
        trainer.failure = None  # the site fixed its module
        await client.handle(round_started(2))

    asyncio.run(rounds())

    assert transport.declines == [("r", 1, "task_unavailable")]
    assert len(trainer.calls) == 1 and len(transport.uploads) == 1


def test_a_client_with_its_own_folder_asks_for_it_and_one_without_simulates_its_share(tmp_path: Path) -> None:
    own, _, own_trainer = worker(client_data=tmp_path)
    simulated, _, simulated_trainer = worker()

    asyncio.run(own.handle(round_started(1)))
    asyncio.run(simulated.handle(round_started(1)))

    assert own_trainer.requests == [DataRequest(location=tmp_path)]
    [request] = simulated_trainer.requests
    assert request.location is None and request.simulation is not None
    assert (request.simulation.index, request.simulation.clients, request.simulation.limit) == (0, 2, 1000)


def test_a_restarted_client_keeps_counting_its_epsilon(tmp_path: Path) -> None:
    store = LedgerStore(tmp_path, "c-1")
    transports = []
    for round_ in (1, 2, 3):  # a fresh process (worker) for every round, the same disk
        client, transport, _ = worker(store)
        asyncio.run(client.handle(round_started(round_, epsilon=0.5)))
        transports.append(transport)

    assert [len(t.uploads) for t in transports] == [1, 1, 0]
    assert transports[2].declines == [("r", 3, "privacy_budget")]
    assert store.load("r") is not None and store.load("other-run") is None


def test_an_unreadable_ledger_is_an_error_not_a_fresh_budget(tmp_path: Path) -> None:
    (tmp_path / "privacy-ledger-c-1.json").write_text("{not json")

    with pytest.raises(OSError, match="privacy ledger"):
        LedgerStore(tmp_path, "c-1").load("r")


class ClosedRoundTransport(RecordingTransport):
    """The coordinator says the round closed (a client catching up after a restart)."""

    async def download_model(self, run_id: str, version: int, digest: str, round_: int = 0) -> bytes:
        assert round_ == 1, "the client names the round it wants the model for"
        raise grpc.aio.AioRpcError(
            grpc.StatusCode.FAILED_PRECONDITION, grpc.aio.Metadata(), grpc.aio.Metadata(), "round_closed: round 1"
        )


def test_a_round_that_closed_meanwhile_is_skipped_without_training_or_spending(tmp_path: Path) -> None:
    transport, trainer, ledgers = ClosedRoundTransport(), FixedTrainer(), LedgerStore(tmp_path, "c-1")
    registration = Registration(client_id="c-1", token="t")
    client = ClientWorker(
        transport,  # type: ignore[arg-type]
        trainer,  # type: ignore[arg-type]
        registration,
        data_dir=None,
        clock=Clock(),
        ledgers=ledgers,
        share=(0, 2),
    )

    asyncio.run(client.handle(round_started(1)))  # handled: not requeued, not dead-lettered

    assert trainer.calls == [] and transport.uploads == [] and ledgers.load("r") is None
