"""Capability-aware plans (``[run.plans] adaptive``): a pure function from the clients' measured costs to each
selected client's local steps and codec for the round (contracts/capability.py says what is measured).

For each selected client with a measurement, on the run's plan (its epochs over its samples, at its batch
size) the round would cost ``step_s * full_steps`` of training plus ``wire_bytes(codec) / uplink`` of upload.
The target is `plans.target_s`, or the median of those costs over the round's measured clients, and at most
DEADLINE_SHARE of the round's deadline. The codec is the least compressed of `plans.codecs` whose upload fits
`plans.upload_share` of the target (the most compressed when none does); the steps are what fits the rest,
between `plans.min_work` of the full steps and all of them. A client never measured trains the run's plan.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from contracts.capability import DEADLINE_SHARE, Capability, ClientPlan, estimated_wire_bytes, full_steps
from contracts.config import RunConfig

__all__ = ["UNMEASURED", "plan_clients"]

UNMEASURED = "no measurement yet: the run's plan"


@dataclass(frozen=True, slots=True)
class _Cost:
    full_steps: int
    train_s: float  # of the full steps
    upload_s: float | None  # on the run's codec; None: uplink not measured yet


def plan_clients(
    config: RunConfig, selected: Sequence[str], capabilities: Mapping[str, Capability]
) -> dict[str, ClientPlan]:
    """Each selected client's plan for a round of `config` (plans.adaptive on)."""
    policy = config.plans
    costs = {client: _cost(config, capabilities[client]) for client in selected if client in capabilities}
    deadline = DEADLINE_SHARE * config.round.timeout_s
    if policy.target_s is not None:
        target, source = min(policy.target_s, deadline), "the run's"
    elif costs:
        target, source = min(statistics.median(_total(cost) for cost in costs.values()), deadline), "the median"
    else:
        target, source = deadline, "the deadline's"
    plans = {}
    for client in selected:
        cost = costs.get(client)
        plans[client] = (
            _plan(config, capabilities[client], cost, target, source)
            if cost is not None
            else ClientPlan(max_steps=None, compression=config.compression, why=UNMEASURED)
        )
    return plans


def _cost(config: RunConfig, capability: Capability) -> _Cost:
    steps = full_steps(config.round.local_epochs, capability.num_samples, config.round.batch_size)
    uplink = capability.uplink_bytes_per_s
    upload_s = None if uplink is None else estimated_wire_bytes(capability, config.compression) / uplink
    return _Cost(full_steps=steps, train_s=capability.step_s * steps, upload_s=upload_s)


def _total(cost: _Cost) -> float:
    return cost.train_s + (cost.upload_s or 0.0)


def _plan(config: RunConfig, capability: Capability, cost: _Cost, target: float, source: str) -> ClientPlan:
    policy = config.plans
    codecs = policy.codecs or (config.compression,)
    uplink = capability.uplink_bytes_per_s
    codec, upload_s = codecs[-1], 0.0
    for candidate in codecs:
        seconds = 0.0 if uplink is None else estimated_wire_bytes(capability, candidate) / uplink
        codec, upload_s = candidate, seconds
        if seconds <= policy.upload_share * target:
            break
    room = max(0.0, target - upload_s)
    fitting = math.floor(room / capability.step_s) if capability.step_s > 0 else cost.full_steps
    least = max(1, math.ceil(policy.min_work * cost.full_steps))
    steps = min(cost.full_steps, max(least, fitting))
    link = "uplink not measured" if uplink is None else f"upload {upload_s:.2f} s at {uplink * 8 / 1e6:.2f} Mbit/s"
    why = (
        f"{capability.step_s * 1e3:.0f} ms/step, {steps} of {cost.full_steps} steps, {codec} ({link}) "
        f"for {source} target {target:.2f} s"
    )
    return ClientPlan(max_steps=None if steps >= cost.full_steps else steps, compression=codec, why=why)
