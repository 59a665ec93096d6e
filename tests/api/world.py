"""A realistic run written straight into an event log: what a coordinator and aggregators would append."""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

from contracts.capability import ClientPlan
from contracts.config import RunConfig
from contracts.envelope import Envelope
from contracts.events import (
    ClientDeclined,
    ClientRegistered,
    Event,
    ModelInitialized,
    QuorumReached,
    RoundAggregated,
    RoundStarted,
    RunCreated,
    UpdateAccepted,
    UpdateRejected,
)
from persistence.sql_event_log import SqlEventLog

CLIENTS = ("c-alpha", "c-bravo", "c-charlie")
FEDBUFF_CLIENTS = ("f-delta", "f-echo", "f-foxtrot")  # their own: the seeded clients' counts stay as they are
TARGET_EPSILON = 4.0
# What the coordinator's capability-aware plans give c-bravo in every seeded round (RoundStarted.plans).
BRAVO_PLAN = ClientPlan(max_steps=12, compression="topk:0.1+int8", why="uplink 0.5 Mbit/s: topk fits").to_dict()


def digest(tag: str) -> str:
    return (tag.encode().hex() * 64)[:64]


async def append(log: SqlEventLog, stream: str, *events: Event) -> None:
    await log.append(stream, [Envelope(event=e) for e in events])


async def register_clients(log: SqlEventLog, clients: Sequence[str] = CLIENTS) -> None:
    for index, client in enumerate(clients):
        caps = {"device": "cpu", "cores": 2, "memory_bytes": 1 << 30, "hostname": f"host-{index}"}
        await append(log, f"client:{client}", ClientRegistered(client_id=client, capabilities=caps))


async def create_run(log: SqlEventLog, run_id: str, *, rounds: int = 5, **options: Any) -> None:
    settings = {"clients": len(CLIENTS), "rounds": rounds, "privacy": {"epsilon": TARGET_EPSILON}, **options}
    config = RunConfig.from_dict(settings)
    await append(
        log,
        f"run:{run_id}",
        RunCreated(run_id=run_id, config=config.to_dict()),
        ModelInitialized(run_id=run_id, model_version=0, model_digest=digest("m0"), num_parameters=26_000),
    )


def accuracy_of(round_: int) -> float:
    return round(0.5 + 0.1 * round_, 4)


def loss_of(round_: int) -> float:
    return round(1.5 / round_, 4)


async def play_round(log: SqlEventLog, run_id: str, round_: int, *, aggregate: bool = True) -> None:
    """Selection of every client; two accepted updates, one rejected (norm); then quorum and aggregation."""
    stream, now = f"run:{run_id}", time.time()
    accepted = [
        UpdateAccepted(
            run_id=run_id,
            round=round_,
            update_id=f"u-{run_id}-{round_}-{client}",
            client_id=client,
            num_samples=100 + 10 * i,
            digest=digest(f"u{round_}{i}"),
            wire_bytes=2_000 + i,
            raw_bytes=8_000,
            ratio=4.0 - 0.1 * i,
            epsilon=0.5 * round_ + 0.1 * i,
            metrics={"loss": 1.0, "accuracy": 0.7, "noise_multiplier": 1.1},
        )
        for i, client in enumerate(CLIENTS[:2])
    ]
    events: list[Event] = [
        RoundStarted(
            run_id=run_id,
            round=round_,
            attempt=1,
            model_version=round_ - 1,
            model_digest=digest(f"m{round_ - 1}"),
            selected=CLIENTS,
            deadline=now + 60,
            train={"lr": 0.1},
            plans={CLIENTS[1]: BRAVO_PLAN},
        ),
        *accepted,
        UpdateRejected(run_id=run_id, round=round_, client_id=CLIENTS[2], reason="norm", detail="norm 9.1 > 5"),
        QuorumReached(
            run_id=run_id,
            round=round_,
            model_version=round_ - 1,
            update_ids=tuple(u.update_id for u in accepted),
            partial=False,
        ),
    ]
    if aggregate:
        events.append(
            RoundAggregated(
                run_id=run_id,
                round=round_,
                model_version=round_,
                model_digest=digest(f"m{round_}"),
                num_updates=len(accepted),
                metrics={"accuracy": accuracy_of(round_), "loss": loss_of(round_)},
                duration_s=0.25,
            )
        )
    for event in events:
        await append(log, stream, event)


def buffered(run_id: str, round_: int, client: str, model_version: int, *, late: bool = False) -> UpdateAccepted:
    """A FedBuff update of `client` for `round_`, trained on `model_version`."""
    return UpdateAccepted(
        run_id=run_id,
        round=round_,
        update_id=f"u-{run_id}-{round_}-{client}",
        client_id=client,
        num_samples=100,
        digest=digest(f"b{round_}{client}"),
        wire_bytes=2_000,
        raw_bytes=8_000,
        ratio=4.0,
        epsilon=None,
        metrics={"loss": 1.0},
        late=late,
        model_version=model_version,
    )


async def play_fedbuff(log: SqlEventLog, run_id: str) -> None:
    """FedBuff with buffers of two: f-foxtrot's round-1 update comes after its buffer closed, is recorded late
    and carried into round 2's buffer; f-echo's round-2 update comes late too, with round 3 still open."""
    stream, now = f"run:{run_id}", time.time()
    await register_clients(log, FEDBUFF_CLIENTS)
    await create_run(log, run_id, strategy={"name": "fedbuff", "buffer_size": 2})

    def started(round_: int, selected: tuple[str, ...]) -> RoundStarted:
        version = round_ - 1
        return RoundStarted(
            run_id=run_id,
            round=round_,
            attempt=1,
            model_version=version,
            model_digest=digest(f"m{version}"),
            selected=selected,
            deadline=now + 60,
            train={"lr": 0.1},
        )

    def closed(round_: int, *buffer: UpdateAccepted) -> QuorumReached:
        ids = tuple(u.update_id for u in buffer)
        return QuorumReached(run_id=run_id, round=round_, model_version=round_ - 1, update_ids=ids, partial=False)

    def aggregated(round_: int) -> RoundAggregated:
        return RoundAggregated(
            run_id=run_id,
            round=round_,
            model_version=round_,
            model_digest=digest(f"m{round_}"),
            num_updates=2,
            metrics={"accuracy": accuracy_of(round_)},
            duration_s=0.1,
        )

    alpha, bravo = buffered(run_id, 1, FEDBUFF_CLIENTS[0], 0), buffered(run_id, 1, FEDBUFF_CLIENTS[1], 0)
    charlie = buffered(run_id, 1, FEDBUFF_CLIENTS[2], 0, late=True)
    again = buffered(run_id, 2, FEDBUFF_CLIENTS[0], 1)
    events: list[Event] = [
        started(1, FEDBUFF_CLIENTS),
        alpha,
        bravo,
        closed(1, alpha, bravo),
        charlie,
        aggregated(1),
        started(2, FEDBUFF_CLIENTS[:2]),
        again,
        closed(2, charlie, again),
        buffered(run_id, 2, FEDBUFF_CLIENTS[1], 1, late=True),
        aggregated(2),
        started(3, (FEDBUFF_CLIENTS[0],)),
    ]
    for event in events:
        await append(log, stream, event)


async def decline(log: SqlEventLog, run_id: str, round_: int, client: str) -> None:
    await append(log, f"run:{run_id}", ClientDeclined(run_id=run_id, round=round_, client_id=client, reason="budget"))


async def seed(url: str, run_id: str = "run-a", *, rounds: int = 2) -> None:
    """A log with three clients and a run whose first `rounds` rounds are aggregated."""
    log = await SqlEventLog.connect(url)
    try:
        await register_clients(log)
        await create_run(log, run_id)
        for round_ in range(1, rounds + 1):
            await play_round(log, run_id, round_)
    finally:
        await log.close()
