"""Robust aggregation as pure numpy: norm clipping, coordinate-wise median, trimmed mean and (multi-)Krum.

FedAvg streams updates into a running sum (memory O(model)). The robust rules need every update at once:
they keep one flat float32 row per client, so memory is O(clients x model), plus one (clients, columns)
block of about 1M cells while combining. They ignore ``num_samples`` on purpose: the count is
reported by the client, and weighting by it would hand a Byzantine client a lever.
"""

from __future__ import annotations

import abc
import math
from collections.abc import Callable, Iterator
from typing import Any, Protocol

import numpy as np

from contracts.catalog import FEDAVG, KRUM, MEDIAN, TRIMMED_MEAN
from contracts.errors import ConfigError
from contracts.tensors import TensorDict, TensorMapping
from contracts.update_validation import l2_norm
from workers.learning.fedavg import StreamingFedAvg

Float32Array = np.ndarray[Any, np.dtype[np.float32]]
Float64Array = np.ndarray[Any, np.dtype[np.float64]]

# Combining works on (clients, columns) blocks of about this many cells, whatever the model size.
_CELLS = 1 << 20


class Aggregator(Protocol):
    """What the aggregator worker folds updates into; StreamingFedAvg is one."""

    @property
    def count(self) -> int: ...

    def add(self, update: TensorMapping, num_samples: int) -> None: ...

    def result(self) -> TensorDict: ...


def clip_to_norm(update: TensorMapping, bound: float) -> TensorDict:
    """``update`` scaled so that the global L2 norm of its float tensors is at most ``bound``.

    Other tensors, and updates already within the bound, are returned as they are (not copied).
    The scaled tensors keep their dtype, so the norm may exceed ``bound`` by float rounding (~1e-7).
    """
    _check_bound(bound)
    arrays = {name: np.asarray(update[name]) for name in update}
    norm = l2_norm(arrays)
    if not math.isfinite(norm):
        raise ValueError("cannot clip an update with non-finite values")
    if norm <= bound:
        return dict(arrays)
    scale = bound / norm
    return {
        name: np.multiply(array, scale, dtype=np.float64).astype(array.dtype) if array.dtype.kind == "f" else array
        for name, array in arrays.items()
    }


def _check_bound(bound: float) -> None:
    if isinstance(bound, bool) or not isinstance(bound, int | float) or not (math.isfinite(bound) and bound > 0):
        raise ConfigError("round.clip_norm", f"must be a positive finite number, got {bound!r}")


class _Clipped:
    """Clips each update to ``bound`` before handing it to another aggregator."""

    def __init__(self, inner: Aggregator, bound: float) -> None:
        _check_bound(bound)
        self._inner = inner
        self._bound = bound

    @property
    def count(self) -> int:
        return self._inner.count

    def add(self, update: TensorMapping, num_samples: int) -> None:
        self._inner.add(clip_to_norm(update, self._bound), num_samples)

    def result(self) -> TensorDict:
        return self._inner.result()


class _Stacked(abc.ABC):
    """Keeps every update as one flat float32 row (keys in sorted order); subclasses combine the rows."""

    def __init__(self) -> None:
        self._shapes: dict[str, tuple[int, ...]] = {}
        self._rows: list[Float32Array] = []

    @property
    def count(self) -> int:
        """How many updates were added."""
        return len(self._rows)

    def add(self, update: TensorMapping, num_samples: int) -> None:
        """Keep one update; ``num_samples`` is checked but not used. The first update fixes keys and shapes."""
        if num_samples <= 0:
            raise ValueError(f"num_samples must be > 0, got {num_samples}")
        if not self._rows:
            self._shapes = {name: tuple(np.shape(update[name])) for name in sorted(update)}
        elif set(update) != set(self._shapes):
            diff = sorted(set(update) ^ set(self._shapes))
            raise ValueError(f"update keys differ from the first update's: {', '.join(diff)}")
        for name, shape in self._shapes.items():
            if tuple(np.shape(update[name])) != shape:
                raise ValueError(f"{name}: shape {np.shape(update[name])} != first update's {shape}")
        parts = [np.asarray(update[name], dtype=np.float32).reshape(-1) for name in self._shapes]
        self._rows.append(np.concatenate(parts) if parts else np.empty(0, dtype=np.float32))

    def result(self) -> TensorDict:
        """The combined update as float32 tensors with the first update's shapes; ValueError when empty."""
        if not self._rows:
            raise ValueError("no updates to aggregate")
        flat = self._combine()
        out: TensorDict = {}
        start = 0
        for name, shape in self._shapes.items():
            size = math.prod(shape)
            out[name] = flat[start : start + size].reshape(shape)
            start += size
        return out

    @abc.abstractmethod
    def _combine(self) -> Float32Array:
        """The rule itself, over the stacked rows (one per client)."""

    def _blocks(self) -> Iterator[tuple[slice, Float32Array]]:
        """(columns, matrix of shape (clients, len(columns))) over the flat rows, block by block."""
        size = self._rows[0].size
        width = max(1, _CELLS // len(self._rows))
        for start in range(0, size, width):
            columns = slice(start, min(size, start + width))
            yield columns, np.stack([row[columns] for row in self._rows])


class CoordinateMedian(_Stacked):
    """Coordinate-wise median (the mean of the middle two for an even count); breaks down at 50% Byzantine."""

    def _combine(self) -> Float32Array:
        out = np.empty(self._rows[0].size, dtype=np.float32)
        for columns, block in self._blocks():
            out[columns] = np.median(block, axis=0)
        return out


class TrimmedMean(_Stacked):
    """Coordinate-wise mean after dropping the ``floor(trim * n)`` lowest and highest values of each coordinate."""

    def __init__(self, *, trim: float) -> None:
        super().__init__()
        if isinstance(trim, bool) or not (0.0 <= trim < 0.5):
            raise ConfigError("round.trim_fraction", f"must be in [0, 0.5), got {trim!r}")
        self._trim = trim

    def _combine(self) -> Float32Array:
        n = len(self._rows)
        k = int(self._trim * n)
        out = np.empty(self._rows[0].size, dtype=np.float32)
        for columns, block in self._blocks():
            kept = np.sort(block, axis=0)[k : n - k]
            out[columns] = kept.mean(axis=0, dtype=np.float64)
        return out


class Krum(_Stacked):
    """Krum (Blanchard et al. 2017): the update closest to its ``n - f - 2`` nearest neighbours.

    With ``m > 1`` (multi-Krum) the mean of the ``m`` best-scored updates. Needs ``n >= 2f + 3`` updates
    and ``m <= n - f``. Distances are global (over all tensors), accumulated in float64 block by block.
    """

    def __init__(self, *, f: int, m: int = 1) -> None:
        super().__init__()
        if isinstance(f, bool) or not isinstance(f, int) or f < 0:
            raise ConfigError("round.byzantine_f", f"must be an integer >= 0, got {f!r}")
        if isinstance(m, bool) or not isinstance(m, int) or m < 1:
            raise ConfigError("krum_m", f"must be an integer >= 1, got {m!r}")
        self._f = f
        self._m = m

    def scores(self) -> Float64Array:
        """Each update's Krum score: the sum of squared distances to its ``n - f - 2`` nearest others."""
        n = len(self._rows)
        if n < 2 * self._f + 3:
            raise ValueError(f"krum with f={self._f} needs at least {2 * self._f + 3} updates, got {n}")
        distances = np.zeros((n, n), dtype=np.float64)
        for _, block in self._blocks():
            wide = block.astype(np.float64)
            gram = wide @ wide.T
            squares = np.diag(gram)
            distances += squares[:, None] + squares[None, :] - 2.0 * gram
        np.maximum(distances, 0.0, out=distances)
        np.fill_diagonal(distances, np.inf)
        nearest = np.sort(distances, axis=1)[:, : n - self._f - 2]
        scores: Float64Array = nearest.sum(axis=1)
        return scores

    def _combine(self) -> Float32Array:
        n = len(self._rows)
        scores = self.scores()
        if self._m > n - self._f:
            raise ValueError(f"multi-krum m={self._m} must be <= n - f = {n - self._f}")
        chosen = np.argsort(scores, kind="stable")[: self._m]
        total = np.zeros(self._rows[0].size, dtype=np.float64)
        for index in chosen:
            total += self._rows[int(index)]
        mean: Float32Array = (total / self._m).astype(np.float32)
        return mean


_RULES: dict[str, Callable[[int, float, int, float | None], Aggregator]] = {
    FEDAVG: lambda f, trim, m, max_weight: StreamingFedAvg(max_weight=max_weight),
    MEDIAN: lambda f, trim, m, max_weight: CoordinateMedian(),
    TRIMMED_MEAN: lambda f, trim, m, max_weight: TrimmedMean(trim=trim),
    KRUM: lambda f, trim, m, max_weight: Krum(f=f, m=m),
}
AGGREGATOR_NAMES = tuple(_RULES)  # what this registry builds; a test pins it to the catalog


def aggregator_for(
    name: str,
    *,
    f: int = 0,
    trim: float = 0.1,
    clip_norm: float | None = None,
    max_weight: float | None = None,
    krum_m: int = 1,
) -> Aggregator:
    """A fresh aggregator by name: fedavg (streaming, weights capped at ``max_weight``), median,
    trimmed_mean (``trim`` per side) or krum (``f`` Byzantine, multi-Krum when ``krum_m > 1``).

    With ``clip_norm`` every update is first scaled to that L2 norm at most. ``max_weight`` only matters
    to fedavg; the robust rules are unweighted.
    """
    if name not in _RULES:
        raise ConfigError("round.aggregator", f"unknown aggregator {name!r}; allowed: {', '.join(_RULES)}")
    aggregator = _RULES[name](f, trim, krum_m, max_weight)
    return aggregator if clip_norm is None else _Clipped(aggregator, clip_norm)
