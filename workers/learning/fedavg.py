"""Weighted FedAvg as pure array code: a streaming weighted mean and the server-side model step."""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from contracts.errors import ConfigError
from contracts.tensors import Array, TensorDict, TensorMapping

# Updates are folded into the float64 sum block by block, so no full-size temporary is ever allocated.
_BLOCK = 1 << 16

Float64Array = np.ndarray[Any, np.dtype[np.float64]]


class StreamingFedAvg:
    """Running weighted mean of client updates, memory O(model) however many clients report.

    Each client's weight is its sample count, capped at ``max_weight`` so that no single client dominates.
    """

    def __init__(self, *, max_weight: float | None = None) -> None:
        if max_weight is not None and not (math.isfinite(max_weight) and max_weight > 0):
            raise ConfigError("max_weight", f"must be a positive finite number, got {max_weight!r}")
        self._max_weight = max_weight
        self._sums: dict[str, Float64Array] = {}
        self._scratch: Float64Array = np.empty(0, dtype=np.float64)
        self._count = 0
        self._total_weight = 0.0

    @property
    def count(self) -> int:
        """How many updates were added."""
        return self._count

    @property
    def total_weight(self) -> float:
        """Sum of the (capped) weights added so far."""
        return self._total_weight

    def add(self, update: TensorMapping, num_samples: int) -> None:
        """Fold in one update with weight ``min(num_samples, max_weight)``; the first fixes keys, shapes."""
        if num_samples <= 0:
            raise ValueError(f"num_samples must be > 0, got {num_samples}")
        weight = float(num_samples if self._max_weight is None else min(num_samples, self._max_weight))
        if self._sums:
            self._check_matches(update)
        else:
            self._sums = {name: np.zeros(np.shape(update[name]), dtype=np.float64) for name in sorted(update)}
        for name, total in self._sums.items():
            self._accumulate(total.reshape(-1), np.asarray(update[name]).reshape(-1), weight)
        self._count += 1
        self._total_weight += weight

    def result(self) -> TensorDict:
        """The weighted mean so far, as float32; ValueError when nothing was added."""
        if not self._count:
            raise ValueError("no updates to average")
        out: TensorDict = {}
        for name, total in self._sums.items():
            mean = np.empty(total.shape, dtype=np.float32)
            np.divide(total, self._total_weight, out=mean, casting="same_kind")
            out[name] = mean
        return out

    def _check_matches(self, update: TensorMapping) -> None:
        if set(update) != set(self._sums):
            diff = sorted(set(update) ^ set(self._sums))
            raise ValueError(f"update keys differ from the first update's: {', '.join(diff)}")
        for name, total in self._sums.items():
            if np.shape(update[name]) != total.shape:
                raise ValueError(f"{name}: shape {np.shape(update[name])} != first update's {total.shape}")

    def _accumulate(self, total: Float64Array, values: Array, weight: float) -> None:
        if self._scratch.size < min(values.size, _BLOCK):
            self._scratch = np.empty(min(values.size, _BLOCK), dtype=np.float64)
        for start in range(0, values.size, _BLOCK):
            block = values[start : start + _BLOCK]
            scratch = self._scratch[: block.size]
            np.multiply(block, weight, out=scratch, dtype=np.float64)
            total[start : start + _BLOCK] += scratch


def scaled(update: TensorMapping, factor: float) -> TensorDict:
    """``factor * update`` for float tensors (in their dtype); other tensors as they are."""
    out: TensorDict = {}
    for name, tensor in update.items():
        array = np.asarray(tensor)
        out[name] = np.multiply(array, factor).astype(array.dtype) if array.dtype.kind == "f" else array
    return out


def apply_update(base: TensorMapping, delta: TensorMapping, *, server_lr: float = 1.0) -> TensorDict:
    """``base + server_lr * delta`` for float tensors (in base's dtype); other tensors copied from base."""
    unknown = sorted(set(delta) - set(base))
    if unknown:
        raise ValueError(f"delta has tensors the base lacks: {', '.join(unknown)}")
    out: TensorDict = {}
    for name in sorted(base):
        weights = np.asarray(base[name])
        if weights.dtype.kind != "f":
            out[name] = weights.copy()
            continue
        if name not in delta:
            raise ValueError(f"{name}: float tensor missing from delta")
        step = np.asarray(delta[name])
        if step.shape != weights.shape:
            raise ValueError(f"{name}: delta shape {step.shape} != base shape {weights.shape}")
        updated = weights.astype(np.float64) + server_lr * step.astype(np.float64)
        out[name] = updated.astype(weights.dtype)
    return out
