"""The seeded fault schedule: which fault, after how long, on which trigger, for how long, on whom.

The same seed gives the same plan; what the plan meets (which round is open, which aggregator holds a
message) depends on timing, so the report records what each fault actually hit.
"""

from __future__ import annotations

import os
import random
from dataclasses import dataclass
from enum import StrEnum
from typing import Final


class FaultKind(StrEnum):
    COORDINATOR_KILL = "coordinator_kill"  # kill -9, restart with the same run id and token secret
    AGGREGATOR_KILL = "aggregator_kill"  # kill -9, restart
    CLIENT_KILL = "client_kill"  # kill -9, restart with the same instance name (same identity)
    BROKER_CUT = "broker_cut"  # every AMQP connection dropped at the proxy, refused for a while
    DB_TERMINATE = "db_terminate"  # pg_terminate_backend on every session of the run's database


class Trigger(StrEnum):
    NOW = "now"  # after the gap, whatever the run is doing
    ROUND_OPEN = "round_open"  # a round started and not closed yet: clients train and upload
    QUORUM_PENDING = "quorum_pending"  # a round reached quorum and is not aggregated yet


MIX: Final[dict[FaultKind, int]] = {
    FaultKind.COORDINATOR_KILL: 5,
    FaultKind.AGGREGATOR_KILL: 5,
    FaultKind.CLIENT_KILL: 6,
    FaultKind.BROKER_CUT: 6,
    FaultKind.DB_TERMINATE: 6,
}
TRIGGERS: Final[dict[FaultKind, tuple[Trigger, ...]]] = {
    FaultKind.COORDINATOR_KILL: (Trigger.NOW, Trigger.ROUND_OPEN, Trigger.QUORUM_PENDING),
    FaultKind.AGGREGATOR_KILL: (Trigger.QUORUM_PENDING,),
    FaultKind.CLIENT_KILL: (Trigger.ROUND_OPEN,),
    FaultKind.BROKER_CUT: (Trigger.NOW, Trigger.ROUND_OPEN, Trigger.QUORUM_PENDING),
    FaultKind.DB_TERMINATE: (Trigger.NOW, Trigger.ROUND_OPEN, Trigger.QUORUM_PENDING),
}
DEFAULT_SEED: Final = 20240611


@dataclass(frozen=True, slots=True, kw_only=True)
class PlannedFault:
    """One fault of the plan; `down_s` is how long a killed process stays down or the broker stays cut."""

    index: int
    kind: FaultKind
    trigger: Trigger
    gap_s: float  # quiet time after the previous fault recovered
    delay_s: float  # after the trigger fired
    down_s: float
    target: int  # which aggregator or client (an index; the injector takes it modulo the count)


def fault_seed() -> int:
    """FEDBUS_FAULT_SEED, to replay a schedule, or the default one."""
    return int(os.environ.get("FEDBUS_FAULT_SEED", DEFAULT_SEED))


def plan_faults(seed: int, mix: dict[FaultKind, int] = MIX) -> list[PlannedFault]:
    """The kinds of `mix` in a seeded order, each with its trigger, waits, downtime and target."""
    rng = random.Random(seed)
    kinds = [kind for kind, count in mix.items() for _ in range(count)]
    rng.shuffle(kinds)
    plan = []
    for index, kind in enumerate(kinds):
        down = rng.uniform(1.0, 5.0) if kind is FaultKind.BROKER_CUT else rng.uniform(0.5, 2.5)
        plan.append(
            PlannedFault(
                index=index,
                kind=kind,
                trigger=rng.choice(TRIGGERS[kind]),
                gap_s=rng.uniform(1.0, 4.0),
                delay_s=rng.uniform(0.0, 3.0),
                down_s=down,
                target=rng.randrange(1000),
            )
        )
    return plan
