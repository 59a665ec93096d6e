"""With user-level DP the pure decider draws each round's cohort by seeded Poisson sampling, records how in
RoundStarted.sampling (and hands it to the aggregator in QuorumReached), takes an empty sample as a round,
and ends the run before a round would pass the user-level budget."""

from __future__ import annotations

import pytest

from contracts.config import PrivacyConfig, RunConfig
from contracts.events import (
    Event,
    ModelInitialized,
    QuorumReached,
    RoundAggregated,
    RoundStarted,
    RunCompleted,
    RunCreated,
)
from contracts.run_state import RunState, state_from_created
from contracts.uploads import UploadHeader
from contracts.user_privacy import USER_EPSILON_NEXT, UserPrivacyConfig
from services.coordinator import decide
from services.coordinator.decide import ClientPool
from services.coordinator.rules import poisson_sample

RUN = "r1"
CLIENTS = tuple(f"c{i:02d}" for i in range(40))
POOL = ClientPool(active=frozenset(CLIENTS))


def user_dp(*, rate: float = 0.25, seed: int = 0, epsilon: float | None = None) -> RunConfig:
    dp = UserPrivacyConfig(enabled=True, sample_rate=rate, adaptive=False, epsilon=epsilon)
    return RunConfig(clients=len(CLIENTS), rounds=5, seed=seed, privacy=PrivacyConfig(enabled=False), user_privacy=dp)


def initialized(config: RunConfig) -> RunState:
    run = state_from_created(RunCreated(run_id=RUN, config=config.to_dict()))
    run.apply(ModelInitialized(run_id=RUN, model_version=0, model_digest="m0", num_parameters=10), 0.0)
    return run


def header(client: str) -> UploadHeader:
    return UploadHeader(
        run_id=RUN, round=1, client_id=client, base_model_version=0, num_samples=10, codec="int8", total_size=1,
        sha256="a" * 64, raw_bytes=4,
    )  # fmt: skip


def test_poisson_sampling_takes_each_client_independently_at_the_rate() -> None:
    many = [f"c{i}" for i in range(20_000)]

    sample = poisson_sample(many, 0.3, seed=1, round_=1, attempt=1)

    # 20k Bernoulli(0.3) draws: the fraction is within 4 standard deviations (0.0032) of 0.3
    assert len(sample) / len(many) == pytest.approx(0.3, abs=0.013)
    assert list(sample) == sorted(sample) and set(sample) <= set(many)
    assert poisson_sample(many, 1.0, seed=1, round_=1, attempt=1) == tuple(sorted(many))


def test_poisson_sampling_is_seeded_per_run_round_and_attempt() -> None:
    def draw(seed: int, round_: int, attempt: int) -> tuple[str, ...]:
        return poisson_sample(CLIENTS, 0.5, seed=seed, round_=round_, attempt=attempt)

    assert draw(0, 1, 1) == draw(0, 1, 1)
    assert len({draw(0, 1, 1), draw(1, 1, 1), draw(0, 2, 1), draw(0, 1, 2)}) == 4


def test_a_user_dp_round_is_poisson_sampled_and_says_so() -> None:
    run = initialized(user_dp(rate=0.25))

    [started] = decide.due(run, POOL, now=1.0)

    assert isinstance(started, RoundStarted)
    assert started.selected == poisson_sample(CLIENTS, 0.25, seed=0, round_=1, attempt=1)
    assert started.sampling == {"kind": "poisson", "rate": 0.25, "population": len(CLIENTS)}


def test_without_user_dp_the_fixed_sample_is_recorded_as_such() -> None:
    config = RunConfig(clients=4, privacy=PrivacyConfig(enabled=False))

    [started] = decide.due(initialized(config), ClientPool(active=frozenset(CLIENTS[:4])), now=1.0)

    assert isinstance(started, RoundStarted)
    assert started.sampling == {"kind": "fixed", "fraction": 1.0, "population": 4}


def test_the_quorum_hands_the_rounds_sampling_to_the_aggregator() -> None:
    run = initialized(user_dp(rate=1.0))
    [started] = decide.due(run, POOL, now=1.0)
    run.apply(started, 1.0)

    events: list[Event] = []
    for client in CLIENTS[:32]:  # the default quorum, 0.8 of 40
        decided = decide.accept(run, header(client), update_id=f"u-{client}", wire_bytes=1, pool=POOL, now=2.0)
        for event in decided:
            run.apply(event, 2.0)
        events += decided

    [quorum] = [e for e in events if isinstance(e, QuorumReached)]
    assert isinstance(started, RoundStarted) and quorum.sampling == started.sampling
    assert quorum.partial  # 8 sampled clients missing: the aggregator will not count the amplification


def test_an_empty_poisson_sample_is_a_round_that_closes_at_once_for_a_noise_only_step() -> None:
    seed = next(s for s in range(1000) if not poisson_sample(CLIENTS[:3], 0.05, seed=s, round_=1, attempt=1))
    run = initialized(user_dp(rate=0.05, seed=seed))

    events = decide.due(run, ClientPool(active=frozenset(CLIENTS[:3])), now=1.0)

    started, quorum = events
    assert isinstance(started, RoundStarted) and started.selected == ()
    assert isinstance(quorum, QuorumReached) and quorum.update_ids == () and not quorum.partial
    assert quorum.sampling == {"kind": "poisson", "rate": 0.05, "population": 3}


@pytest.mark.parametrize(("epsilon_next", "ends"), [(8.0, False), (10.5, True)])
def test_the_run_ends_before_a_round_that_would_pass_the_user_budget(epsilon_next: float, ends: bool) -> None:
    run = initialized(user_dp(epsilon=10.0))
    [started] = decide.due(run, POOL, now=1.0)
    run.apply(started, 1.0)
    done = RoundAggregated(
        run_id=RUN, round=1, model_version=1, model_digest="m1", num_updates=3, duration_s=0.1,
        metrics={"accuracy": 0.5, USER_EPSILON_NEXT: epsilon_next},
    )  # fmt: skip
    run.apply(done, 2.0)

    [event] = decide.due(run, POOL, now=2.0)

    if ends:
        assert isinstance(event, RunCompleted) and event.reason == "budget" and event.rounds == 1
    else:
        assert isinstance(event, RoundStarted) and event.round == 2
