"""The fault schedule is reproducible from its seed and covers every kind (no services needed)."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from tests.faults.schedule import TRIGGERS, FaultKind, plan_faults


@given(st.integers(min_value=0, max_value=2**32))
def test_the_same_seed_gives_the_same_plan(seed: int) -> None:
    assert plan_faults(seed) == plan_faults(seed)


@given(st.integers(min_value=0, max_value=2**32))
def test_a_plan_holds_more_than_twenty_faults_of_every_kind_within_their_bounds(seed: int) -> None:
    plan = plan_faults(seed)

    assert len(plan) > 20 and {f.kind for f in plan} == set(FaultKind)
    assert all(f.trigger in TRIGGERS[f.kind] for f in plan)
    cuts = [f.down_s for f in plan if f.kind is FaultKind.BROKER_CUT]
    assert all(1.0 <= down <= 5.0 for down in cuts)


def test_different_seeds_give_different_orders() -> None:
    orders = {tuple(f.kind for f in plan_faults(seed)) for seed in range(5)}

    assert len(orders) > 1
