from __future__ import annotations

import json
import warnings

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from opacus.accountants import RDPAccountant

from contracts.config import ACCOUNTANTS as CONFIG_ACCOUNTANTS
from contracts.config import PrivacyConfig
from contracts.errors import CodecError, ConfigError
from workers.learning.privacy import ACCOUNTANTS, PrivacyLedger, derive_noise_multiplier, plan_privacy

DELTA = 1e-5


@pytest.mark.parametrize(
    ("epsilon", "sample_rate", "steps"), [(3.0, 64 / 6000, 1410), (1.0, 0.01, 500), (8.0, 0.05, 200)]
)
def test_derived_noise_spends_just_under_the_target_epsilon(epsilon: float, sample_rate: float, steps: int) -> None:
    noise = derive_noise_multiplier(target_epsilon=epsilon, delta=DELTA, sample_rate=sample_rate, steps=steps)
    ledger = PrivacyLedger()

    ledger.record(noise, sample_rate, steps)

    assert 0.95 * epsilon <= ledger.epsilon(DELTA) <= epsilon


def test_plan_counts_steps_per_round_from_the_sample_rate() -> None:
    plan = plan_privacy(target_epsilon=3.0, delta=DELTA, num_samples=6000, batch_size=64, epochs_per_round=2, rounds=15)

    assert plan.sample_rate == pytest.approx(64 / 6000)
    assert plan.steps_per_round == 2 * 94
    assert plan.planned_steps == 15 * 2 * 94
    assert plan.noise_multiplier > 0


def test_plan_clips_the_sample_rate_to_one_for_tiny_clients() -> None:
    plan = plan_privacy(target_epsilon=3.0, delta=DELTA, num_samples=10, batch_size=64, epochs_per_round=1, rounds=2)

    assert plan.sample_rate == 1.0
    assert plan.steps_per_round == 1


@pytest.mark.parametrize(
    "kwargs",
    [
        {"target_epsilon": 0.0, "delta": DELTA, "sample_rate": 0.01, "steps": 10},
        {"target_epsilon": 1.0, "delta": 1.5, "sample_rate": 0.01, "steps": 10},
        {"target_epsilon": 1.0, "delta": DELTA, "sample_rate": 0.0, "steps": 10},
        {"target_epsilon": 1.0, "delta": DELTA, "sample_rate": 0.01, "steps": 0},
    ],
)
def test_out_of_range_inputs_are_config_errors(kwargs: dict[str, float]) -> None:
    with pytest.raises(ConfigError):
        derive_noise_multiplier(**kwargs)  # type: ignore[arg-type]


def test_ledger_accumulates_epsilon_across_rounds_and_survives_serialization() -> None:
    ledger = PrivacyLedger()
    spent = [ledger.epsilon(DELTA)]

    for _ in range(3):
        # What a client does between rounds: restore, record, store.
        ledger = PrivacyLedger.from_dict(json.loads(json.dumps(ledger.to_dict())))
        ledger.record(1.0, 0.01, 100)
        spent.append(ledger.epsilon(DELTA))

    assert spent[0] == 0.0
    assert spent == sorted(spent) and len(set(spent)) == 4
    assert PrivacyLedger.from_dict(ledger.to_dict()).epsilon(DELTA) == spent[-1]
    assert ledger.history == [(1.0, 0.01, 300)]


def test_prospective_epsilon_shows_a_budget_would_be_exceeded_without_recording() -> None:
    plan = plan_privacy(target_epsilon=2.0, delta=DELTA, num_samples=6000, batch_size=64, epochs_per_round=1, rounds=3)
    ledger = PrivacyLedger()
    ledger.record(plan.noise_multiplier, plan.sample_rate, plan.planned_steps)
    before = ledger.epsilon(DELTA)

    after = ledger.epsilon_after(plan.noise_multiplier, plan.sample_rate, plan.steps_per_round, DELTA)

    assert before <= 2.0 < after
    assert ledger.epsilon(DELTA) == before


@settings(max_examples=30, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.floats(0.3, 10.0),
            st.floats(1e-4, 1.0),
            st.integers(1, 10_000),
        ),
        max_size=5,
    )
)
def test_ledger_dict_round_trip_keeps_the_history(entries: list[tuple[float, float, int]]) -> None:
    ledger = PrivacyLedger()
    for entry in entries:
        ledger.record(*entry)

    restored = PrivacyLedger.from_dict(json.loads(json.dumps(ledger.to_dict())))

    assert restored.history == ledger.history


@pytest.mark.parametrize(
    "data",
    [
        {},
        {"accountant": "gdp", "history": []},
        {"accountant": "rdp", "history": [[1.0, 0.1]]},
        {"accountant": "rdp", "history": [[-1.0, 0.1, 5]]},
    ],
)
def test_malformed_ledger_dicts_are_codec_errors(data: dict[str, object]) -> None:
    with pytest.raises(CodecError):
        PrivacyLedger.from_dict(data)


@settings(max_examples=25, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.sampled_from([0.5, 0.9, 1.3, 4.0]), st.sampled_from([0.005, 0.02, 0.21, 1.0]), st.integers(1, 500)
        ),
        min_size=1,
        max_size=4,
    ),
    st.sampled_from([1e-5, 1e-3]),
)
def test_ledger_epsilon_is_exactly_opacus_rdp_accountant(entries: list[tuple[float, float, int]], delta: float) -> None:
    ledger, accountant = PrivacyLedger(), RDPAccountant()
    for noise, rate, steps in entries:
        ledger.record(noise, rate, steps)
    accountant.history = [tuple(entry) for entry in ledger.history]

    assert ledger.epsilon(delta) == accountant.get_epsilon(delta=delta)


def test_the_prv_accountant_calibrates_less_noise_and_its_ledger_reports_the_same_budget() -> None:
    settings = {"target_epsilon": 3.0, "delta": 1e-5, "num_samples": 3000, "batch_size": 64, "epochs_per_round": 1}
    rdp, prv = (plan_privacy(**settings, rounds=5, accountant=a) for a in ("rdp", "prv"))  # type: ignore[arg-type]
    ledgers = {name: PrivacyLedger(name) for name in ("rdp", "prv")}
    for name, plan in (("rdp", rdp), ("prv", prv)):
        ledgers[name].record(plan.noise_multiplier, plan.sample_rate, plan.planned_steps)

    assert prv.noise_multiplier < rdp.noise_multiplier
    for ledger in ledgers.values():
        assert 2.9 <= ledger.epsilon(1e-5) <= 3.0 + 1e-6
    # The same steps accounted with RDP instead cost more than the budget PRV calibrated them for.
    as_rdp = PrivacyLedger("rdp")
    as_rdp.record(prv.noise_multiplier, prv.sample_rate, prv.planned_steps)
    assert as_rdp.epsilon(1e-5) > 3.0
    again = PrivacyLedger.from_dict(ledgers["prv"].to_dict())
    assert again.accountant == "prv" and again.epsilon(1e-5) == ledgers["prv"].epsilon(1e-5)


def test_an_unknown_accountant_is_refused_where_it_is_named() -> None:
    with pytest.raises(ConfigError, match="accountant"):
        PrivacyLedger("gdp")
    with pytest.raises(ConfigError, match=r"privacy\.accountant"):
        PrivacyConfig(accountant="gdp")
    assert ACCOUNTANTS == CONFIG_ACCOUNTANTS


@pytest.mark.parametrize("accountant", ACCOUNTANTS)
def test_user_level_accounting_at_rate_one_and_large_noise_logs_no_warning(accountant: str) -> None:
    """User-level DP without amplification (q = 1) at ~16x noise: Opacus' PRV takes log(1 - q) = -inf on purpose
    and both bounds' best RDP order is the largest one. Those warnings filled a user-level run's log."""
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with np.errstate(divide="raise"):
            # steps=7: a combination no other test calibrates, so that the search's cache cannot answer it.
            z = derive_noise_multiplier(
                target_epsilon=0.5, delta=DELTA, sample_rate=1.0, steps=7, accountant=accountant
            )
            ledger = PrivacyLedger(accountant)
            ledger.record(z, 1.0, 7)
            spent = ledger.epsilon(DELTA)
    assert z > 10 and 0.4 < spent <= 0.5 + 0.02
