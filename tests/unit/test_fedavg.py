from __future__ import annotations

import tracemalloc
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from contracts.errors import ConfigError
from workers.learning.fedavg import StreamingFedAvg, apply_update

Tensors = dict[str, np.ndarray[Any, Any]]


def test_weighted_mean_of_two_clients() -> None:
    fedavg = StreamingFedAvg()

    fedavg.add({"w": np.array([1.0, 2.0], np.float32)}, num_samples=1)
    fedavg.add({"w": np.array([5.0, 6.0], np.float32)}, num_samples=3)
    result = fedavg.result()

    assert fedavg.count == 2
    assert fedavg.total_weight == 4.0
    assert result["w"].dtype == np.float32
    np.testing.assert_array_equal(result["w"], [4.0, 5.0])


def test_weights_are_capped() -> None:
    fedavg = StreamingFedAvg(max_weight=2)

    fedavg.add({"w": np.array([0.0], np.float32)}, num_samples=2)
    fedavg.add({"w": np.array([4.0], np.float32)}, num_samples=1000)

    assert fedavg.total_weight == 4.0
    np.testing.assert_array_equal(fedavg.result()["w"], [2.0])


@settings(max_examples=50, deadline=None)
@given(
    st.lists(
        st.tuples(
            hnp.arrays(np.float32, (3, 4), elements=st.floats(-100, 100, width=32)),
            st.integers(1, 1000),
        ),
        min_size=1,
        max_size=6,
    )
)
def test_streaming_result_equals_the_batch_weighted_mean(clients: list[tuple[Any, int]]) -> None:
    fedavg = StreamingFedAvg()

    for array, samples in clients:
        fedavg.add({"w": array, "b": array[0]}, samples)
    result: dict[str, Any] = dict(fedavg.result())

    weights = np.array([samples for _, samples in clients], dtype=np.float64)
    stacked = np.stack([array.astype(np.float64) for array, _ in clients])
    expected = np.tensordot(weights, stacked, axes=1) / weights.sum()
    np.testing.assert_allclose(result["w"], expected, rtol=1e-6, atol=1e-5)
    np.testing.assert_allclose(result["b"], expected[0], rtol=1e-6, atol=1e-5)


def test_large_tensors_are_folded_in_blocks_without_losing_elements() -> None:
    fedavg = StreamingFedAvg()
    first = np.arange(7 * 28_573, dtype=np.float32).reshape(7, 28_573)

    fedavg.add({"w": first}, num_samples=1)
    fedavg.add({"w": -first}, num_samples=3)

    np.testing.assert_array_equal(fedavg.result()["w"], -first / 2)


@pytest.mark.parametrize("samples", [0, -5])
def test_non_positive_sample_counts_are_refused(samples: int) -> None:
    with pytest.raises(ValueError, match="num_samples"):
        StreamingFedAvg().add({"w": np.zeros(1)}, samples)


@pytest.mark.parametrize("max_weight", [0.0, -1.0, float("nan")])
def test_a_nonsensical_weight_cap_is_a_config_error(max_weight: float) -> None:
    with pytest.raises(ConfigError, match="max_weight"):
        StreamingFedAvg(max_weight=max_weight)


@pytest.mark.parametrize(
    ("second", "message"),
    [
        ({"w": np.zeros(2), "extra": np.zeros(1)}, "extra"),
        ({"v": np.zeros(2)}, "keys differ"),
        ({"w": np.zeros(3)}, "w: shape"),
    ],
)
def test_updates_must_match_the_first_ones_keys_and_shapes(second: Tensors, message: str) -> None:
    fedavg = StreamingFedAvg()
    fedavg.add({"w": np.zeros(2)}, 1)

    with pytest.raises(ValueError, match=message):
        fedavg.add(second, 1)

    assert fedavg.count == 1


def test_result_of_nothing_is_an_error() -> None:
    with pytest.raises(ValueError, match="no updates"):
        StreamingFedAvg().result()


def test_memory_does_not_grow_with_the_number_of_updates() -> None:
    size = 1_000_000
    model_bytes = 4 * size
    fedavg = StreamingFedAvg()

    def make_update(seed: int) -> Tensors:
        return {"w": np.random.default_rng(seed).random(size, dtype=np.float32)}

    tracemalloc.start()
    try:
        fedavg.add(make_update(0), 10)
        _, peak_after_one = tracemalloc.get_traced_memory()
        for seed in range(1, 50):
            fedavg.add(make_update(seed), 10)
        _, peak_after_fifty = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()

    # One live float32 update plus the float64 running sum is ~3x the model (plus small scratch buffers);
    # keeping the 50 updates would be 50x.
    assert fedavg.count == 50
    assert peak_after_fifty < 4 * model_bytes
    assert peak_after_fifty < peak_after_one + 0.5 * model_bytes


def test_apply_update_steps_floats_and_keeps_counters() -> None:
    base: Tensors = {
        "w": np.array([1.0, 2.0], np.float32),
        "h": np.array([1.0], np.float16),
        "steps": np.array(7, np.int64),
    }
    delta = {"w": np.array([0.5, -1.0], np.float32), "h": np.array([2.0], np.float32), "steps": np.array(99)}

    updated = apply_update(base, delta, server_lr=0.5)

    np.testing.assert_array_equal(updated["w"], [1.25, 1.5])
    assert updated["w"].dtype == np.float32
    np.testing.assert_array_equal(updated["h"], [2.0])
    assert updated["h"].dtype == np.float16
    assert updated["steps"] == 7
    assert updated["steps"] is not base["steps"]


def test_apply_update_defaults_to_a_full_step() -> None:
    updated = apply_update({"w": np.array([1.0], np.float32)}, {"w": np.array([2.0], np.float32)})

    np.testing.assert_array_equal(updated["w"], [3.0])


@pytest.mark.parametrize(
    ("delta", "message"),
    [
        ({}, "missing from delta"),
        ({"w": np.zeros(3), "other": np.zeros(1)}, "lacks: other"),
        ({"w": np.zeros(2)}, "delta shape"),
    ],
)
def test_apply_update_refuses_a_delta_that_does_not_fit(delta: Tensors, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        apply_update({"w": np.zeros(3, np.float32)}, delta)
