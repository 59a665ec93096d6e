from __future__ import annotations

import math
from typing import Any

import numpy as np
import pytest

from contracts.errors import ConfigError
from contracts.tensor_codec import TensorSpec, specs_of
from contracts.update_validation import Rejection, RejectReason, l2_norm, validate_update

Tensors = dict[str, np.ndarray[Any, Any]]


def _model() -> Tensors:
    return {
        "conv.weight": np.zeros((4, 1, 3, 3), dtype=np.float32),
        "conv.bias": np.zeros(4, dtype=np.float64),
        "bn.num_batches_tracked": np.array(0, dtype=np.int64),
    }


def _update() -> Tensors:
    """A decompressed update: floats are float32 whatever the model's float dtype."""
    return {
        "conv.weight": np.full((4, 1, 3, 3), 0.1, dtype=np.float32),
        "conv.bias": np.full(4, 0.1, dtype=np.float32),
        "bn.num_batches_tracked": np.array(3, dtype=np.int64),
    }


def _reject(update: Tensors, *, max_norm: float | None = None) -> Rejection:
    rejection = validate_update(update, specs_of(_model()), max_norm=max_norm)
    assert rejection is not None
    return rejection


def test_a_matching_update_passes() -> None:
    assert validate_update(_update(), specs_of(_model()), max_norm=10.0) is None


def test_missing_tensors_are_named() -> None:
    update = _update()
    del update["conv.bias"]

    rejection = _reject(update)

    assert rejection == Rejection(reason=RejectReason.MISSING_KEYS, detail="missing tensors: conv.bias")


def test_unexpected_tensors_are_named() -> None:
    rejection = _reject(_update() | {"extra": np.zeros(1, np.float32)})

    assert rejection.reason is RejectReason.UNEXPECTED_KEYS
    assert "extra" in rejection.detail


def test_a_wrong_shape_names_the_tensor_and_both_shapes() -> None:
    rejection = _reject(_update() | {"conv.bias": np.zeros(5, np.float32)})

    assert rejection.reason is RejectReason.WRONG_SHAPE
    assert rejection.detail == "conv.bias: shape (5,) != expected (4,)"


@pytest.mark.parametrize(
    ("name", "array"),
    [
        ("conv.weight", np.zeros((4, 1, 3, 3), dtype=np.int32)),
        ("bn.num_batches_tracked", np.array(0.5, dtype=np.float32)),
        ("conv.bias", np.zeros(4, dtype=np.complex64)),
        ("bn.num_batches_tracked", np.array(True)),
    ],
)
def test_a_dtype_of_the_wrong_kind_is_rejected(name: str, array: np.ndarray[Any, Any]) -> None:
    rejection = _reject(_update() | {name: array})

    assert rejection.reason is RejectReason.WRONG_DTYPE
    assert rejection.detail.startswith(f"{name}:")


def test_float_precision_differences_are_accepted() -> None:
    update = _update() | {"conv.weight": np.zeros((4, 1, 3, 3), dtype=np.float16)}

    assert validate_update(update, specs_of(_model())) is None


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_values_are_rejected_naming_the_tensor(bad: float) -> None:
    update = _update()
    update["conv.weight"][0, 0, 1, 1] = bad

    rejection = _reject(update)

    assert rejection == Rejection(reason=RejectReason.NOT_FINITE, detail="conv.weight: 1 non-finite values")


def test_structure_is_checked_before_values() -> None:
    update = _update() | {"conv.bias": np.full(5, np.nan, np.float32)}

    assert _reject(update).reason is RejectReason.WRONG_SHAPE


def test_a_global_norm_over_the_bound_is_rejected() -> None:
    # norm = sqrt(36 * 0.01 + 4 * 0.01) ~ 0.632; the int counter does not count.
    rejection = _reject(_update(), max_norm=0.6)

    assert rejection.reason is RejectReason.NORM_EXCEEDED
    assert "conv.weight" in rejection.detail


def test_a_norm_just_under_the_bound_passes() -> None:
    assert validate_update(_update(), specs_of(_model()), max_norm=0.64) is None


@pytest.mark.parametrize("max_norm", [0.0, -1.0, float("nan"), float("inf")])
def test_a_nonsensical_norm_bound_is_a_config_error(max_norm: float) -> None:
    with pytest.raises(ConfigError, match="max_norm"):
        validate_update(_update(), specs_of(_model()), max_norm=max_norm)


def test_reference_may_be_any_sequence_of_specs() -> None:
    reference = [TensorSpec(name="w", dtype="float32", shape=(2,))]

    assert validate_update({"w": np.ones(2, np.float32)}, reference) is None


def test_reject_reasons_have_stable_wire_values() -> None:
    assert {reason.value for reason in RejectReason} == {
        "corrupt",
        "digest_mismatch",
        "too_large",
        "missing_keys",
        "unexpected_keys",
        "wrong_shape",
        "wrong_dtype",
        "not_finite",
        "norm_exceeded",
        "not_selected",
        "round_closed",
        "stale_model",
        "duplicate",
        "bad_header",
        "epsilon_missing",
        "budget_exceeded",
    }


def test_the_norm_is_exact_enough_and_survives_float32_overflow_and_half_precision() -> None:
    rng = np.random.default_rng(3)
    small = (rng.standard_normal(1_000_003) * 0.01).astype(np.float32)
    exact = math.sqrt(float(np.sum(small.astype(np.float64) ** 2)))
    assert l2_norm({"w": small}) == pytest.approx(exact, rel=1e-5)
    huge = np.full(4, 3e30, dtype=np.float32)  # its squares overflow float32, not float64
    assert l2_norm({"w": huge}) == pytest.approx(6e30, rel=1e-6)
    half = np.full(70_000, 1.0, dtype=np.float16)  # summed in float16 this would stall at 2048
    assert l2_norm({"w": half}) == pytest.approx(math.sqrt(70_000))
