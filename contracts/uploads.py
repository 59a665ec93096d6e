"""What a client sends besides events: its capabilities at registration and the header of an upload."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from contracts.errors import ConfigError

MAX_SAMPLES = 1 << 40  # far beyond any client's data; keeps weights and JSON numbers sane


@dataclass(frozen=True, slots=True, kw_only=True)
class ClientCapabilities:
    device: str = "cpu"
    cores: int = 1
    memory_bytes: int = 0
    hostname: str = ""

    def __post_init__(self) -> None:
        if self.cores < 0 or self.memory_bytes < 0:
            raise ConfigError("capabilities", "cores and memory_bytes must be >= 0")


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
        if not self.run_id:
            raise ConfigError("header.run_id", "must not be empty")
        if self.round < 1:
            raise ConfigError("header.round", f"must be >= 1, got {self.round}")
        if self.num_samples < 1:
            raise ConfigError("header.num_samples", f"must be >= 1, got {self.num_samples}")
        if self.total_size < 1:
            raise ConfigError("header.total_size", f"must be >= 1, got {self.total_size}")
        if self.raw_bytes < 0:
            raise ConfigError("header.raw_bytes", f"must be >= 0, got {self.raw_bytes}")
        if len(self.sha256) != 64:
            raise ConfigError("header.sha256", "must be 64 hex digits")
        if self.epsilon is not None and not 0 <= self.epsilon < math.inf:
            raise ConfigError("header.epsilon", f"must be a finite number >= 0, got {self.epsilon}")
        if self.num_samples > MAX_SAMPLES:
            raise ConfigError("header.num_samples", f"must be <= {MAX_SAMPLES}, got {self.num_samples}")
        for name, value in self.metrics.items():
            if not math.isfinite(value):
                raise ConfigError(f"header.metrics.{name}", f"must be finite, got {value}")
