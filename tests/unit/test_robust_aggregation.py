"""Robust aggregation rules (clipping, median, trimmed mean, Krum), their config, CLI flag and worker wiring."""

from __future__ import annotations

import argparse
import asyncio
import hashlib
from typing import Any, cast

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from contracts.catalog import AGGREGATORS
from contracts.compression import compress_update, parse_compression
from contracts.config import RoundConfig, RunConfig
from contracts.envelope import Envelope
from contracts.errors import ConfigError
from contracts.events import ModelInitialized, QuorumReached, RoundAggregated, RoundFailed, RunCreated, UpdateAccepted
from contracts.tensor_codec import decode_tensors, encode_with_manifest
from persistence.in_memory_event_log import InMemoryEventLog
from services.cli.options import add_run_options, config_from
from workers.aggregator.evaluator import PoolEvaluator
from workers.aggregator.worker import AggregatorWorker
from workers.learning.robust import AGGREGATOR_NAMES, CoordinateMedian, Krum, TrimmedMean, aggregator_for, clip_to_norm

Vector = np.ndarray[Any, np.dtype[np.float32]]


def vec(*values: float) -> dict[str, Vector]:
    return {"w": np.array(values, dtype=np.float32)}


matrices = st.integers(1, 7).flatmap(
    lambda n: hnp.arrays(
        np.float32,
        st.tuples(st.just(n), st.integers(1, 5)),
        elements=st.floats(-1e6, 1e6, width=32, allow_nan=False),
    )
)


# --- clipping --------------------------------------------------------------------------------------------------


def test_clipping_scales_an_update_down_to_the_bound() -> None:
    update = {"a": np.array([3.0], np.float32), "b": np.array([[4.0]], np.float32), "steps": np.array([7], np.int64)}

    clipped = clip_to_norm(update, 1.0)

    np.testing.assert_allclose(clipped["a"], [0.6], rtol=1e-6)
    np.testing.assert_allclose(clipped["b"], [[0.8]], rtol=1e-6)
    assert clipped["b"].dtype == np.float32
    np.testing.assert_array_equal(clipped["steps"], [7])


def test_clipping_leaves_an_update_within_the_bound_unchanged() -> None:
    update = vec(0.3, 0.4)

    clipped = clip_to_norm(update, 1.0)

    np.testing.assert_array_equal(clipped["w"], update["w"])


@settings(max_examples=50, deadline=None)
@given(
    values=hnp.arrays(np.float32, st.integers(1, 20), elements=st.floats(-1e4, 1e4, width=32)),
    bound=st.floats(1e-3, 1e3),
)
def test_a_clipped_update_is_within_the_bound_and_points_the_same_way(values: Vector, bound: float) -> None:
    norm = float(np.linalg.norm(values.astype(np.float64)))

    clipped = clip_to_norm({"w": values}, bound)["w"].astype(np.float64)

    assert np.linalg.norm(clipped) <= bound * (1 + 1e-6)
    expected = values.astype(np.float64) * min(1.0, bound / norm) if norm > 0 else values
    np.testing.assert_allclose(clipped, expected, rtol=1e-6, atol=1e-30)


@pytest.mark.parametrize("bound", [0.0, -1.0, float("inf"), float("nan")])
def test_a_nonsensical_clip_bound_is_a_config_error(bound: float) -> None:
    with pytest.raises(ConfigError, match=r"round\.clip_norm"):
        clip_to_norm(vec(1.0), bound)
    with pytest.raises(ConfigError, match=r"round\.clip_norm"):
        aggregator_for("median", clip_norm=bound)


def test_clipping_applies_before_a_robust_rule() -> None:
    median = aggregator_for("median", clip_norm=1.0)

    for update in (vec(10.0, 0.0), vec(0.0, 10.0), vec(3.0, 4.0)):
        median.add(update, 1)

    np.testing.assert_allclose(median.result()["w"], [0.6, 0.8], rtol=1e-6)
    assert median.count == 3


# --- median and trimmed mean ---------------------------------------------------------------------------------


def test_median_of_three_vectors_is_coordinate_wise_and_keeps_shapes() -> None:
    median = CoordinateMedian()
    for row in ([1.0, 5.0, 3.0, 0.0], [2.0, 0.0, 9.0, 0.0], [100.0, -100.0, 4.0, 1.0]):
        median.add({"w": np.array(row, np.float32).reshape(2, 2), "b": np.array(row[:1], np.float32)}, 10)

    result = median.result()

    assert result["w"].shape == (2, 2) and result["w"].dtype == np.float32
    np.testing.assert_array_equal(result["w"], [[2.0, 0.0], [4.0, 0.0]])
    np.testing.assert_array_equal(result["b"], [2.0])


def test_median_of_an_even_count_is_the_mean_of_the_middle_two() -> None:
    median = aggregator_for("median")
    for value in (1.0, 2.0, 4.0, 100.0):
        median.add(vec(value), 1)

    np.testing.assert_array_equal(median.result()["w"], [3.0])


def test_trimmed_mean_drops_the_extremes_of_each_coordinate() -> None:
    trimmed = TrimmedMean(trim=0.2)  # 5 updates: drop 1 at each end
    for row in ([1.0, -50.0], [2.0, 1.0], [3.0, 2.0], [4.0, 3.0], [100.0, 4.0]):
        trimmed.add(vec(*row), 1)

    np.testing.assert_allclose(trimmed.result()["w"], [3.0, 2.0])


def test_trimmed_mean_without_trimming_is_the_plain_mean() -> None:
    trimmed = aggregator_for("trimmed_mean", trim=0.0)
    for value in (1.0, 2.0, 6.0):
        trimmed.add(vec(value), 1)

    np.testing.assert_allclose(trimmed.result()["w"], [3.0])


@pytest.mark.parametrize("trim", [-0.1, 0.5, 0.7, float("nan")])
def test_a_trim_fraction_outside_its_range_is_a_config_error(trim: float) -> None:
    with pytest.raises(ConfigError, match=r"round\.trim_fraction"):
        aggregator_for("trimmed_mean", trim=trim)


@settings(max_examples=40, deadline=None)
@given(rows=matrices, data=st.data())
def test_median_and_trimmed_mean_ignore_arrival_order_and_stay_within_the_inputs(rows: Vector, data: Any) -> None:
    order = data.draw(st.permutations(range(len(rows))))
    for name in ("median", "trimmed_mean"):
        forward, shuffled = aggregator_for(name, trim=0.25), aggregator_for(name, trim=0.25)
        for i, j in zip(range(len(rows)), order, strict=True):
            forward.add({"w": rows[i]}, 1)
            shuffled.add({"w": rows[j]}, 1)

        result = forward.result()["w"]

        np.testing.assert_array_equal(result, shuffled.result()["w"])
        assert np.all(result >= rows.min(axis=0)) and np.all(result <= rows.max(axis=0))


# --- Krum ----------------------------------------------------------------------------------------------------


CLUSTER = [vec(0.0, 0.0), vec(0.1, 0.0), vec(0.0, 0.1), vec(0.1, 0.1)]


def test_krum_picks_an_update_from_the_honest_cluster() -> None:
    krum = Krum(f=1)
    for update in [vec(10.0, 10.0), *CLUSTER]:
        krum.add(update, 1)

    scores = krum.scores()
    result = krum.result()["w"]

    assert int(np.argmax(scores)) == 0
    assert any(np.array_equal(result, honest["w"]) for honest in CLUSTER)


def test_multi_krum_averages_the_best_scored_updates() -> None:
    krum = aggregator_for("krum", f=1, krum_m=4)
    for update in [*CLUSTER[:2], vec(-10.0, 10.0), *CLUSTER[2:]]:
        krum.add(update, 1)

    np.testing.assert_allclose(krum.result()["w"], [0.05, 0.05], rtol=1e-6)


def test_krum_refuses_fewer_than_2f_plus_3_updates() -> None:
    krum = aggregator_for("krum", f=1)
    for update in CLUSTER:
        krum.add(update, 1)

    with pytest.raises(ValueError, match="at least 5 updates"):
        krum.result()


def test_multi_krum_refuses_to_average_more_than_n_minus_f() -> None:
    krum = aggregator_for("krum", f=1, krum_m=5)
    for update in [*CLUSTER, vec(1.0, 1.0)]:
        krum.add(update, 1)

    with pytest.raises(ValueError, match="m=5"):
        krum.result()


@pytest.mark.parametrize(("f", "m", "field"), [(-1, 1, "round.byzantine_f"), (1, 0, "krum_m")])
def test_nonsensical_krum_parameters_are_config_errors(f: int, m: int, field: str) -> None:
    with pytest.raises(ConfigError, match=field):
        Krum(f=f, m=m)


# --- the common interface ------------------------------------------------------------------------------------


def test_every_configurable_aggregator_has_an_implementation() -> None:
    assert AGGREGATOR_NAMES == AGGREGATORS


def test_an_unknown_aggregator_is_a_config_error_listing_the_allowed_ones() -> None:
    with pytest.raises(ConfigError, match="allowed: fedavg, median, trimmed_mean, krum") as caught:
        aggregator_for("mean_of_best")

    assert caught.value.field == "round.aggregator"


def test_fedavg_by_name_caps_sample_weights() -> None:
    fedavg = aggregator_for("fedavg", max_weight=2)

    fedavg.add(vec(0.0), 2)
    fedavg.add(vec(4.0), 1000)

    np.testing.assert_array_equal(fedavg.result()["w"], [2.0])


@pytest.mark.parametrize("name", ["median", "trimmed_mean", "krum"])
def test_robust_rules_reject_mismatched_or_empty_input(name: str) -> None:
    aggregator = aggregator_for(name)
    with pytest.raises(ValueError, match="no updates"):
        aggregator.result()
    with pytest.raises(ValueError, match="num_samples"):
        aggregator.add(vec(1.0), 0)
    aggregator.add(vec(1.0, 2.0), 1)

    with pytest.raises(ValueError, match="keys differ"):
        aggregator.add({"v": np.zeros(2, np.float32)}, 1)
    with pytest.raises(ValueError, match="shape"):
        aggregator.add(vec(1.0), 1)


# --- Byzantine clients ---------------------------------------------------------------------------------------

N_CLIENTS, DIM = 10, 100


def as_update(row: Vector) -> dict[str, Vector]:
    return {"w": row[:80].reshape(4, 20), "b": row[80:]}


def byzantine_round(f: int, attack: str, seed: int) -> tuple[Vector, Vector, float]:
    """Honest rows (noisy around a true mean), Byzantine rows (scaled x100 or sign-flipped), honest spread."""
    rng = np.random.default_rng(seed)
    true_mean = rng.normal(size=DIM)
    honest = (true_mean + 0.1 * rng.normal(size=(N_CLIENTS - f, DIM))).astype(np.float32)
    disguise = (true_mean + 0.1 * rng.normal(size=(f, DIM))).astype(np.float32)
    byzantine = 100.0 * disguise if attack == "scaled" else -disguise
    spread = float(np.max(np.linalg.norm(honest - honest.mean(axis=0, dtype=np.float64), axis=1)))
    return honest, byzantine, spread


def distance_from_honest_mean(
    name: str, options: dict[str, Any], *, attackers: int, attack: str, seed: int
) -> tuple[float, float]:
    honest, byzantine, spread = byzantine_round(attackers, attack, seed)
    aggregator = aggregator_for(name, **options)
    for row in [*byzantine[:1], *honest[:4], *byzantine[1:], *honest[4:]]:  # attackers not all at one end
        aggregator.add(as_update(row), 100)
    result = aggregator.result()
    honest_mean = honest.mean(axis=0, dtype=np.float64)
    return float(np.linalg.norm(np.concatenate([result["w"].reshape(-1), result["b"]]) - honest_mean)), spread


ROBUST: dict[str, Any] = {  # rule name and options, given the number of attackers f
    "median": lambda f: ("median", {}),
    "trimmed_mean": lambda f: ("trimmed_mean", {"trim": 0.3}),
    "krum": lambda f: ("krum", {"f": f}),
    "multi_krum": lambda f: ("krum", {"f": f, "krum_m": N_CLIENTS - f}),
}


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("attack", ["scaled", "sign_flipped"])
@pytest.mark.parametrize("f", [2, 3])
@pytest.mark.parametrize("rule", list(ROBUST))
def test_robust_rules_stay_near_the_honest_mean_under_attack(rule: str, f: int, attack: str, seed: int) -> None:
    name, options = ROBUST[rule](f)

    # Bound: within the largest distance of an honest update from the honest mean (c = 1).
    distance, spread = distance_from_honest_mean(name, options, attackers=f, attack=attack, seed=seed)

    assert distance <= spread


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("f", [2, 3])
def test_clipped_fedavg_stays_near_the_honest_mean_under_a_scaling_attack(f: int, seed: int) -> None:
    honest, _, _ = byzantine_round(f, "scaled", seed)
    bound = float(np.max(np.linalg.norm(honest, axis=1)))  # no honest update is clipped

    distance, spread = distance_from_honest_mean(
        "fedavg", {"clip_norm": bound}, attackers=f, attack="scaled", seed=seed
    )

    assert distance <= spread


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("attack", ["scaled", "sign_flipped"])
@pytest.mark.parametrize("f", [2, 3])
def test_plain_fedavg_is_dragged_far_from_the_honest_mean(f: int, attack: str, seed: int) -> None:
    distance, spread = distance_from_honest_mean("fedavg", {}, attackers=f, attack=attack, seed=seed)

    assert distance > 2 * spread


# --- config, CLI and the worker ------------------------------------------------------------------------------


def test_round_config_defaults_to_plain_fedavg() -> None:
    rules = RoundConfig()

    assert (rules.aggregator, rules.byzantine_f, rules.trim_fraction) == ("fedavg", 0, 0.1)
    assert rules.clip_norm is None and rules.max_sample_weight is None


def test_robust_options_survive_the_dict_round_trip() -> None:
    options = {"aggregator": "krum", "byzantine_f": 2, "min_updates": 7, "clip_norm": 5.0, "max_sample_weight": 600}
    config = RunConfig.from_dict({"round": options})

    assert RunConfig.from_dict(config.to_dict()) == config
    assert config.round.aggregator == "krum" and config.round.max_sample_weight == 600


@pytest.mark.parametrize(
    ("options", "field"),
    [
        ({"aggregator": "mean"}, "round.aggregator"),
        ({"byzantine_f": -1}, "round.byzantine_f"),
        ({"byzantine_f": 1.5}, "round.byzantine_f"),
        ({"trim_fraction": 0.5}, "round.trim_fraction"),
        ({"trim_fraction": -0.01}, "round.trim_fraction"),
        ({"clip_norm": 0.0}, "round.clip_norm"),
        ({"clip_norm": float("inf")}, "round.clip_norm"),
        ({"max_sample_weight": 0}, "round.max_sample_weight"),
        ({"max_sample_weight": 2.5}, "round.max_sample_weight"),
        ({"aggregator": "krum", "byzantine_f": 1, "min_updates": 4}, "round.min_updates"),
    ],
)
def test_out_of_range_robust_options_are_config_errors_naming_the_field(options: dict[str, Any], field: str) -> None:
    with pytest.raises(ConfigError) as caught:
        RunConfig.from_dict({"round": options})

    assert caught.value.field == field


def test_the_aggregator_flag_sets_the_round_aggregator() -> None:
    parser = argparse.ArgumentParser()
    add_run_options(parser)

    config = config_from(parser.parse_args(["--aggregator", "median"]))

    assert config.round.aggregator == "median"


class NoEvaluation:
    async def evaluate(self, weights: Any, *, task: str, limit: int | None) -> dict[str, float]:
        return {}


async def aggregate_one_round(
    round_options: dict[str, Any], rows: list[list[float]], samples: list[int] | None = None
) -> dict[str, Any]:
    log = InMemoryEventLog()
    config = RunConfig.from_dict({"round": round_options})
    base = {"w": np.array([1.0, 1.0], np.float32)}
    model, manifest = encode_with_manifest(base)
    await log.put_blob(manifest.digest, "model", model)
    events: list[Any] = [
        RunCreated(run_id="r", config=config.to_dict()),
        ModelInitialized(run_id="r", model_version=0, model_digest=manifest.digest, num_parameters=2),
    ]
    samples = samples or [10] * len(rows)
    for i, row in enumerate(rows):
        payload = compress_update({"w": np.array(row, np.float32)}, parse_compression("fp32")).payload
        digest = hashlib.sha256(payload).hexdigest()
        await log.put_blob(digest, "update", payload)
        events.append(
            UpdateAccepted(
                run_id="r", round=1, update_id=f"u{i}", client_id=f"c{i}", num_samples=samples[i], digest=digest,
                wire_bytes=len(payload), raw_bytes=8, ratio=1.0, epsilon=None, metrics={},
            )
        )  # fmt: skip
    await log.append("run:r", [Envelope(event=e) for e in events])
    worker = AggregatorWorker(log, cast(PoolEvaluator, NoEvaluation()))
    ids = tuple(f"u{i}" for i in range(len(rows)))
    accepted = [e for e in events if isinstance(e, UpdateAccepted)]
    quorum = QuorumReached(
        run_id="r", round=1, model_version=0, update_ids=ids, partial=False, base_model_digest=manifest.digest,
        update_digests=tuple(e.digest for e in accepted), sample_counts=tuple(e.num_samples for e in accepted),
    )  # fmt: skip
    await worker.handle(Envelope(event=quorum))
    recorded = [r.envelope.event for r in await log.read_stream("run:r")]
    done = [e for e in recorded if isinstance(e, RoundAggregated)]
    if not done:
        return {"failed": [e for e in recorded if isinstance(e, RoundFailed)]}
    return decode_tensors(await log.get_blob(done[0].model_digest))


def test_the_aggregator_worker_uses_the_rule_named_in_the_run_config() -> None:
    rows = [[1.0, 2.0], [2.0, 3.0], [500.0, -500.0]]

    median = asyncio.run(aggregate_one_round({"aggregator": "median"}, rows))
    mean = asyncio.run(aggregate_one_round({}, rows))

    np.testing.assert_allclose(median["w"], [3.0, 3.0])  # base 1 + median (2, 2)
    np.testing.assert_allclose(mean["w"], [1.0 + 503.0 / 3, 1.0 - 495.0 / 3], rtol=1e-6)


def test_the_aggregator_worker_caps_sample_weights_from_the_run_config() -> None:
    rows, samples = [[0.0, 0.0], [3.0, 3.0]], [5, 1000]

    capped = asyncio.run(aggregate_one_round({"max_sample_weight": 5}, rows, samples))

    np.testing.assert_allclose(capped["w"], [2.5, 2.5], rtol=1e-6)  # base 1 + equal-weight mean 1.5


def test_the_aggregator_worker_clips_updates_from_the_run_config() -> None:
    rows = [[0.0, 0.0], [30.0, 40.0]]

    clipped = asyncio.run(aggregate_one_round({"clip_norm": 5.0}, rows))

    np.testing.assert_allclose(clipped["w"], [2.5, 3.0], rtol=1e-6)  # base 1 + mean of (0, 0) and (3, 4)


def test_a_rule_that_cannot_combine_the_updates_fails_the_round_for_a_retry() -> None:
    rows = [[1.0, 1.0], [2.0, 2.0], [3.0, 3.0]]  # Krum with f=1 needs 2f+3 = 5 updates

    outcome = asyncio.run(aggregate_one_round({"aggregator": "krum", "byzantine_f": 1, "min_updates": 5}, rows))

    [failed] = outcome["failed"]
    assert failed.round == 1 and "aggregation failed" in failed.reason
