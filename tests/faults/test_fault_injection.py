"""A deployed DP run under a seeded storm of faults: it completes, and every accepted update is accounted for.

Coordinator, two aggregators and four clients run as OS processes on RabbitMQ (behind a proxy the test
cuts) and PostgreSQL (whose sessions the test terminates). While the run goes on, at least twenty faults
hit it one after another: kill -9 of the coordinator, an aggregator or a client (each restarted with the
same settings), broker cuts of 1-5 s and terminated database sessions. Replay a schedule with
FEDBUS_FAULT_SEED; the report lands in tests/faults/artifacts/fault_report.json.
"""

from __future__ import annotations

import asyncio
import time

import pytest

from broker.topology import DEFAULT
from contracts.events import Event
from tests.deployed.world import outline
from tests.faults.accounting import account
from tests.faults.conftest import FaultyDeployment
from tests.faults.health import ConsumerCensus
from tests.faults.injector import FaultInjector, FaultRecord
from tests.faults.report import build_report, mark_survivors, table, write_report
from tests.faults.restarts import Cast
from tests.faults.schedule import PlannedFault, fault_seed, plan_faults
from tests.faults.triggers import completed, current_round

pytestmark = [pytest.mark.integration, pytest.mark.deployed, pytest.mark.faults]
CLIENTS = 4
AGGREGATORS = 2
ROUNDS = 24  # rounds outrun restarts (2-5 s a round, 5-9 s a client restart): 14 rounds let in only 16 faults on CI
MIN_FAULTS = 20
DEAD_LETTERS = DEFAULT.dead_letters.name
ROUND_RULES = {"quorum": 0.75, "grace_s": 0.0, "timeout_s": 40.0, "max_attempts": 5, "local_epochs": 2}


async def storm(
    faulty: FaultyDeployment, cast: Cast, plan: list[PlannedFault], records: list[FaultRecord]
) -> tuple[list[Event], int]:
    """Inject the plan's faults (into `records`) from round 1 on, until the run completes.

    Returns the run's log and how many messages the broker dead-lettered.
    """
    census = await ConsumerCensus.connect(faulty.direct_amqp_url)
    try:
        async with faulty.world.run_log() as log:
            await log.until(lambda events: current_round(events) is not None, what="round 1", within=240)
            injector = FaultInjector(
                faulty.world, faulty.proxy, census, cast, pg_admin_dsn=faulty.pg_admin_dsn, database=faulty.database
            )
            try:
                pending = list(plan)
                while pending and (record := await injector.inject_next(pending, log)) is not None:
                    records.append(record)
                final = await log.until(completed, what="RunCompleted", within=300)
                await asyncio.wait_for(injector.restarts.idle(), timeout=180)
            finally:
                await injector.restarts.close()
            return final, await census.messages(DEAD_LETTERS)
    finally:
        await census.close()


@pytest.mark.timeout(660)
def test_a_dp_run_survives_twenty_crashes_cuts_and_disconnects_with_every_update_accounted_for(
    faulty: FaultyDeployment,
) -> None:
    world = faulty.world
    world.write_config(clients=CLIENTS, rounds=ROUNDS, train_limit=2000, eval_limit=500, round=ROUND_RULES)
    world.start_coordinator()
    aggregators = [world.start_aggregator(f"aggregator-{i}").name for i in range(AGGREGATORS)]
    clients = {f"client-{i}": world.start_client(f"client-{i}") for i in range(CLIENTS)}
    cast = Cast(
        coordinator="coordinator",
        aggregators=aggregators,
        clients={name: world.client_id(process) for name, process in clients.items()},
        queues={name: world.client_queue(name) for name in clients},
    )
    seed = fault_seed()
    records: list[FaultRecord] = []
    started = time.monotonic()

    try:
        events, dead_letters = asyncio.run(storm(faulty, cast, plan_faults(seed), records))
    finally:
        print("\n".join(f"fault {r.to_json()}" for r in records))

    accounting = account(events)
    mark_survivors(records, len(events), completed(events))
    report = build_report(
        seed=seed,
        records=records,
        accounting=accounting,
        events=events,
        dead_letters=dead_letters,
        wall_s=time.monotonic() - started,
    )
    write_report(report)
    print(table(report))
    assert report["completion_reason"] == "max_rounds", outline(events)
    assert report["rounds_aggregated"] == list(range(1, ROUNDS + 1)), outline(events)
    counts = (accounting.lost, accounting.duplicated, accounting.aggregated_twice, accounting.unexpected)
    assert counts == (0, 0, 0, 0) and accounting.unaggregated == 0, accounting.problems
    assert len(records) >= MIN_FAULTS, f"the run completed after {len(records)} faults"
    assert [r.index for r in records if not r.survived] == [], [r.to_json() for r in records if not r.survived]
