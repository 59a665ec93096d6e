"""Capability-aware plans, table ``[run.plans]``: each selected client gets local work and a codec that fit the round.

A client reports what its last round cost in its update's metrics: `TRAIN_S` (the wall time of its local
training) and `STEPS` (the optimizer steps it took), and `UPLINK` (the bytes per second its previous upload
reached; absent on its first). The run's state folds them into one `Capability` per client, kept current from
every accepted update (late ones too: a straggler's late update is the measurement that matters most). When a
round starts, the coordinator plans each selected client (services/coordinator/plans.py): the least
compressed codec of `codecs` whose upload fits `upload_share` of the target time, then as many local steps as
fit the rest (never more than the run's own plan, never fewer than `min_work` of it). The plans travel in
RoundStarted.plans, with the reason in words; the API shows them.

The measurements are the client's own claims: a client that lies changes only its own plan, which is bounded
by the run's. Record-level DP stays exact: a client's ledger counts the steps it actually took, and the batch
size (hence the sampling rate its noise was calibrated for) is the run's.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final

from contracts.checks import check_flag, check_int, check_range
from contracts.compression import CompressionSpec, parse_compression
from contracts.errors import CodecError, ConfigError

__all__ = [
    "DEADLINE_SHARE",
    "STEPS",
    "TRAIN_S",
    "UPLINK",
    "Capability",
    "ClientPlan",
    "PlansConfig",
    "estimated_wire_bytes",
    "full_steps",
    "measured",
]

# The metrics of an update that measure its client (UploadHeader.metrics, then UpdateAccepted.metrics).
TRAIN_S: Final = "train_s"
STEPS: Final = "steps"
UPLINK: Final = "uplink_bytes_per_s"
SMOOTHING: Final = 0.5  # weight of the newest measurement: a device's speed moves, one slow round is not all
MAX_CODECS: Final = 8
MAX_WHY: Final = 300
DEADLINE_SHARE: Final = 0.8  # a plan leaves the last fifth of the round's deadline as margin


@dataclass(frozen=True, slots=True, kw_only=True)
class PlansConfig:
    """Capability-aware plans; off by default (every selected client trains the run's plan)."""

    adaptive: bool = False
    # The time a client's round (training and upload) should take; None: the median of the round's measured
    # clients on the run's plan, so that stragglers are brought to the typical client's pace. Either way at
    # most DEADLINE_SHARE of round.timeout_s.
    target_s: float | None = None
    min_work: float = 0.25  # the least fraction of the run's local steps a plan gives
    upload_share: float = 0.5  # the most of the target an upload may take before a smaller codec is chosen
    codecs: tuple[str, ...] = ()  # from least to most compressed; () = the run's compression only

    def __post_init__(self) -> None:
        check_flag("plans.adaptive", self.adaptive)
        if self.target_s is not None:
            check_range("plans.target_s", self.target_s, 0.0, 86_400.0, low_open=True)
        check_range("plans.min_work", self.min_work, 0.0, 1.0, low_open=True)
        check_range("plans.upload_share", self.upload_share, 0.0, 1.0, low_open=True)
        codecs: Any = self.codecs  # TOML and JSON give a list, or anything
        if isinstance(codecs, str) or not isinstance(codecs, list | tuple):
            raise ConfigError("plans.codecs", f"must be a list of compressions, got {codecs!r:.100}")
        if len(codecs) > MAX_CODECS:
            raise ConfigError("plans.codecs", f"at most {MAX_CODECS} codecs, got {len(codecs)}")
        for codec in codecs:
            if not isinstance(codec, str):
                raise ConfigError("plans.codecs", f"must be compressions (strings), got {codec!r:.100}")
            try:
                parse_compression(codec)
            except ConfigError as exc:
                raise ConfigError("plans.codecs", exc.message) from exc
        object.__setattr__(self, "codecs", tuple(codecs))


@dataclass(frozen=True, slots=True, kw_only=True)
class Capability:
    """What a client's rounds cost, from its accepted updates (smoothed by SMOOTHING)."""

    step_s: float  # seconds per local step, training time over steps
    uplink_bytes_per_s: float | None  # None until an update reports a previous upload
    num_samples: int  # of its latest update: with the batch size, the steps of a full epoch
    raw_bytes: int  # the dense fp32 size of its latest update
    codec: str  # of its latest update ("": not recorded),
    wire_bytes: int  # ... and that update's size on the wire: how well the client's updates compress


def measured(
    previous: Capability | None,
    metrics: Mapping[str, Any],
    *,
    num_samples: int,
    raw_bytes: int,
    codec: str,
    wire_bytes: int,
) -> Capability | None:
    """`previous` updated with one accepted update's measurements; `previous` unchanged when the update carries
    none (an older client, a zero-step round), None when there is neither."""
    train_s, steps, speed = (_positive(metrics.get(key)) for key in (TRAIN_S, STEPS, UPLINK))
    if train_s is None or steps is None:
        return previous
    step_s = train_s / steps
    if previous is not None:
        step_s = _smooth(previous.step_s, step_s)
        if previous.uplink_bytes_per_s is not None:
            speed = previous.uplink_bytes_per_s if speed is None else _smooth(previous.uplink_bytes_per_s, speed)
    return Capability(
        step_s=step_s,
        uplink_bytes_per_s=speed,
        num_samples=num_samples,
        raw_bytes=raw_bytes,
        codec=codec,
        wire_bytes=wire_bytes,
    )


def full_steps(epochs: int, num_samples: int, batch_size: int) -> int:
    """The local steps of `epochs` whole epochs over `num_samples` at `batch_size`: the run's plan, which a
    capability-aware plan may cut."""
    return epochs * math.ceil(num_samples / batch_size)


def estimated_wire_bytes(capability: Capability, codec: str) -> float:
    """The client's next update's size under `codec`: its last update's size scaled by the codecs' nominal
    sizes (value bytes, plus a 4-byte index per kept value under top-k), so that what zstd gained on its
    updates carries over."""
    nominal = _nominal_fraction(parse_compression(codec))
    if not capability.codec or capability.wire_bytes <= 0:
        return capability.raw_bytes * nominal
    return capability.wire_bytes * nominal / _nominal_fraction(parse_compression(capability.codec))


def _nominal_fraction(spec: CompressionSpec) -> float:
    value_bytes = {"fp32": 4, "fp16": 2, "int8": 1}[spec.quantize]
    if spec.topk is None:
        return value_bytes / 4
    return spec.topk * (value_bytes + 4) / 4


@dataclass(frozen=True, slots=True, kw_only=True)
class ClientPlan:
    """One client's plan for a round, in RoundStarted.plans: its local steps (None: the run's) and codec."""

    max_steps: int | None
    compression: str
    why: str

    def to_dict(self) -> dict[str, Any]:
        return {"max_steps": self.max_steps, "compression": self.compression, "why": self.why}

    @classmethod
    def from_dict(cls, client_id: str, data: Any) -> ClientPlan:
        """The plan in `data`; CodecError naming the field (``plans.<client>.<name>``) when it is malformed."""
        where = f"plans.{client_id:.100}"
        if not isinstance(data, Mapping) or set(data) != {"max_steps", "compression", "why"}:
            raise CodecError(f"{where}: must be a map of max_steps, compression and why, got {data!r:.100}")
        steps, codec, why = data["max_steps"], data["compression"], data["why"]
        try:
            if steps is not None:
                check_int("max_steps", steps, 1, 10_000_000)
            if not isinstance(codec, str):
                raise ConfigError("compression", f"must be a string, got {codec!r:.100}")
            parse_compression(codec)
        except ConfigError as exc:
            raise CodecError(f"{where}.{exc.field}: {exc.message}") from exc
        if not isinstance(why, str):
            raise CodecError(f"{where}.why: must be a string, got {why!r:.100}")
        return cls(max_steps=steps, compression=codec, why=why[:MAX_WHY])


def _positive(value: Any) -> float | None:
    """`value` as a float when it is a finite number above 0 (a metric is whatever a client sent), else None."""
    if isinstance(value, bool) or not isinstance(value, int | float) or not (math.isfinite(value) and value > 0):
        return None
    return float(value)


def _smooth(old: float, new: float) -> float:
    return (1 - SMOOTHING) * old + SMOOTHING * new
