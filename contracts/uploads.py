"""What a client sends besides events: its capabilities at registration and the header of an upload.

Every number and string a client supplies is bounded here, where it arrives: what passes fits the log's
columns (32-bit rounds, versions and counts), keeps sums finite and keeps one client's strings from filling
the log. A value out of bounds is a ConfigError naming the field (INVALID_ARGUMENT at the gRPC edge).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Final

from contracts.compression import parse_compression
from contracts.errors import ConfigError

MAX_INT32: Final = 2**31 - 1
MAX_SAMPLES: Final = MAX_INT32  # far beyond any client's data; fits the log's columns and keeps weights sane
MAX_METRIC: Final = 1e9  # |value| of a reported metric (a loss, an accuracy): sums over clients stay finite
MAX_METRICS: Final = 32  # metrics in one header
MAX_NAME: Final = 64  # characters of a metric name or a device
MAX_TEXT: Final = 255  # characters of an id, an instance name, a hostname or a codec
MAX_CORES: Final = 1 << 16
MAX_MEMORY_BYTES: Final = 1 << 50


def check_text(name: str, value: str, *, max_length: int = MAX_TEXT, required: bool = False) -> None:
    """A client-supplied string: at most `max_length` characters, no NUL or other control characters."""
    if required and not value:
        raise ConfigError(name, "must not be empty")
    if len(value) > max_length:
        raise ConfigError(name, f"must be at most {max_length} characters, got {len(value)}")
    if not value.isprintable():
        raise ConfigError(name, "must not contain control characters")


def check_count(name: str, value: int, low: int, high: int = MAX_INT32) -> None:
    """A client-supplied integer in [low, high]."""
    if not low <= value <= high:
        raise ConfigError(name, f"must be in [{low}, {high}], got {value}")


@dataclass(frozen=True, slots=True, kw_only=True)
class ClientCapabilities:
    device: str = "cpu"
    cores: int = 1
    memory_bytes: int = 0
    hostname: str = ""
    own_data: bool = False  # a site with its own data; only simulated clients get a share of a global data set

    def __post_init__(self) -> None:
        check_text("capabilities.device", self.device, max_length=MAX_NAME)
        check_text("capabilities.hostname", self.hostname)
        check_count("capabilities.cores", self.cores, 0, MAX_CORES)
        check_count("capabilities.memory_bytes", self.memory_bytes, 0, MAX_MEMORY_BYTES)


@dataclass(frozen=True, slots=True, kw_only=True)
class UploadHeader:
    """The header of an uploaded update, validated where the bytes arrive."""

    run_id: str
    round: int
    client_id: str
    base_model_version: int
    num_samples: int
    codec: str
    total_size: int
    sha256: str
    raw_bytes: int = 0
    epsilon: float | None = None
    metrics: dict[str, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        check_text("header.run_id", self.run_id, required=True)
        check_text("header.client_id", self.client_id, required=True)
        check_count("header.round", self.round, 1)
        check_count("header.base_model_version", self.base_model_version, 0)
        check_count("header.num_samples", self.num_samples, 1, MAX_SAMPLES)
        check_count("header.total_size", self.total_size, 1, 2**63 - 1)  # past the run's cap: TOO_LARGE, later
        check_count("header.raw_bytes", self.raw_bytes, 0, 1 << 40)
        if len(self.sha256) != 64 or not all(c in "0123456789abcdef" for c in self.sha256):
            raise ConfigError("header.sha256", "must be 64 lowercase hex digits")
        check_text("header.codec", self.codec, required=True)
        try:
            parse_compression(self.codec)
        except ConfigError as exc:
            raise ConfigError("header.codec", exc.message) from exc
        if self.epsilon is not None and not 0 <= self.epsilon < math.inf:
            raise ConfigError("header.epsilon", f"must be a finite number >= 0, got {self.epsilon}")
        if len(self.metrics) > MAX_METRICS:
            raise ConfigError("header.metrics", f"at most {MAX_METRICS} metrics, got {len(self.metrics)}")
        for name, value in self.metrics.items():
            check_text("header.metrics", name, max_length=MAX_NAME, required=True)
            if not (math.isfinite(value) and abs(value) <= MAX_METRIC):
                raise ConfigError(f"header.metrics.{name}", f"must be finite and within ±{MAX_METRIC:g}, got {value}")
