"""User-level DP-FedAvg with adaptive clipping as pure numpy; the noise comes from an injected generator.

One round (Andrew et al. 2021, Algorithm 1; McMahan et al. 2018), with C the clip norm, q·N the expected
cohort (rate q of the N clients eligible when the round started), z_Δ and sigma_b the two noises:

    Δ̃_i = Δ_i · min(1, C / ‖Δ_i‖)                   ‖·‖ the global L2 norm over every float tensor
    Δ̄   = (Σ Δ̃_i + N(0, (z_Δ C)² I)) / (q N)         the update handed to the strategy's server step
    b̃   = (Σ 1[‖Δ_i‖ ≤ C] + N(0, sigma_b²)) / (q N)  the noisy fraction of updates left unclipped
    C   ← C · exp(-η_C (b̃ - gamma))                  adaptive clipping: C moves toward the gamma-quantile

The mean is unweighted and its denominator fixed: the proof needs every client's share bounded by C/(qN)
whatever it reports, so sample counts are ignored. An empty cohort is a valid round whose step is noise
only. C persists between rounds in the strategy-state blob (ClipState), beside the server optimizer's state.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from contracts.tensors import TensorDict, TensorMapping
from contracts.update_validation import l2_norm

Float64Array = np.ndarray[Any, np.dtype[np.float64]]

STATE_PREFIX = "user_dp."
CLIP_NORM = "user_dp.clip_norm"
ROUNDS = "user_dp.rounds"  # rounds released so far: the accountant's steps
UNAMPLIFIED_SINCE = "user_dp.unamplified_since"  # the first round whose cohort was no Poisson sample (0: none)


@dataclass(frozen=True, slots=True, kw_only=True)
class ClipState:
    """What user-level DP carries from round to round."""

    clip_norm: float
    rounds: int = 0
    unamplified_since: int = 0

    @classmethod
    def split(cls, state: TensorMapping, initial_clip_norm: float) -> tuple[ClipState, TensorDict]:
        """This state out of a strategy-state blob (the initial clip norm before any round), and the rest:
        the server optimizer's own state. ValueError when the entries are not what to_state writes."""
        rest = {k: np.asarray(v) for k, v in state.items() if not k.startswith(STATE_PREFIX)}
        if CLIP_NORM not in state:
            return cls(clip_norm=initial_clip_norm), rest
        try:
            clip_norm = _scalar(state, CLIP_NORM)
            rounds, since = int(_scalar(state, ROUNDS)), int(_scalar(state, UNAMPLIFIED_SINCE))
        except KeyError as exc:
            raise ValueError(f"user-level DP state lacks {exc.args[0]}") from exc
        if not (math.isfinite(clip_norm) and clip_norm > 0) or rounds < 0 or since < 0:
            raise ValueError(f"user-level DP state out of range: C={clip_norm}, rounds={rounds}, since={since}")
        return cls(clip_norm=clip_norm, rounds=rounds, unamplified_since=since), rest

    def to_state(self) -> TensorDict:
        return {
            CLIP_NORM: np.array([self.clip_norm], dtype=np.float64),
            ROUNDS: np.array([self.rounds], dtype=np.int64),
            UNAMPLIFIED_SINCE: np.array([self.unamplified_since], dtype=np.int64),
        }


def _scalar(state: TensorMapping, key: str) -> float:
    value = np.asarray(state[key]).reshape(-1)
    if value.size != 1:
        raise ValueError(f"user-level DP state {key} has {value.size} values, not 1")
    return float(value[0])


class ClippedSum:
    """Streams a round's updates: each clipped to `clip_norm` and summed in float64, those within it counted.

    Keys and shapes are the base model's float tensors; an update that does not have exactly those is a
    ValueError. Memory O(model) however many clients report."""

    def __init__(self, base: TensorMapping, clip_norm: float) -> None:
        self.clip_norm = clip_norm
        shapes = {name: np.shape(base[name]) for name in sorted(base) if np.asarray(base[name]).dtype.kind == "f"}
        self._sums: dict[str, Float64Array] = {
            name: np.zeros(shape, dtype=np.float64) for name, shape in shapes.items()
        }
        self._count = 0
        self.unclipped = 0

    @property
    def count(self) -> int:
        return self._count

    def add(self, update: TensorMapping, num_samples: int = 1) -> None:
        """Fold in one client's update; `num_samples` is ignored (the mean is unweighted)."""
        floats = {name for name in update if np.asarray(update[name]).dtype.kind == "f"}
        if floats != set(self._sums):
            raise ValueError(f"update tensors differ from the model's: {', '.join(sorted(floats ^ set(self._sums)))}")
        for name, total in self._sums.items():
            if np.shape(update[name]) != total.shape:
                raise ValueError(f"{name}: shape {np.shape(update[name])} != the model's {total.shape}")
        norm = l2_norm(update)
        if not math.isfinite(norm):
            raise ValueError("cannot clip an update with non-finite values")
        if norm <= self.clip_norm:
            self.unclipped += 1
        scale = min(1.0, self.clip_norm / norm) if norm > 0 else 1.0
        for name, total in self._sums.items():
            total += np.asarray(update[name], dtype=np.float64) * scale
        self._count += 1

    def noised_mean(self, *, noise_multiplier: float, expected: float, rng: np.random.Generator) -> TensorDict:
        """(Σ clipped + N(0, (noise_multiplier · C)²) per coordinate) / expected, as float32."""
        _check_expected(expected)
        std = noise_multiplier * self.clip_norm
        return {
            name: ((total + rng.normal(0.0, std, size=total.shape)) / expected).astype(np.float32)
            for name, total in self._sums.items()
        }


def next_clip_norm(
    summed: ClippedSum,
    *,
    count_stddev: float,
    expected: float,
    target_quantile: float,
    clip_lr: float,
    rng: np.random.Generator,
) -> tuple[float, float]:
    """Adaptive clipping's geometric step: (the next C, the noisy unclipped fraction b̃ it was taken from)."""
    _check_expected(expected)
    fraction = (summed.unclipped + rng.normal(0.0, count_stddev)) / expected
    return summed.clip_norm * math.exp(-clip_lr * (fraction - target_quantile)), fraction


def _check_expected(expected: float) -> None:
    if not (math.isfinite(expected) and expected > 0):
        raise ValueError(f"the expected cohort q·N must be a positive number, got {expected}")
