"""What one client's local round takes and gives back: plain data, importable without torch, so that a client's
own process (which never trains: its pool does) registers and plans without importing it."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from contracts.tensors import TensorDict

__all__ = ["LocalTrainConfig", "LocalTrainResult"]


@dataclass(frozen=True, slots=True, kw_only=True)
class LocalTrainConfig:
    """What a client needs to train one round; `noise_multiplier` is required when `dp` is on."""

    task: str
    epochs: int = 1
    batch_size: int = 64
    lr: float = 0.1
    momentum: float = 0.0
    dp: bool = True
    max_grad_norm: float = 1.0
    noise_multiplier: float | None = None
    delta: float = 1e-5
    seed: int = 0
    device: str | None = None  # None: the process's device (`init_worker`), cpu by default
    max_steps: int | None = None
    proximal_mu: float = 0.0  # FedProx: each step is followed by a pull of mu * lr toward the round's model
    accountant: str = "rdp"  # of a ledger started here (a carried ledger keeps its own)


@dataclass(slots=True, kw_only=True)
class LocalTrainResult:
    """The update (trained minus base weights) with what the coordinator records about it."""

    delta: TensorDict
    num_samples: int
    steps: int
    metrics: dict[str, float]
    ledger: dict[str, Any] = field(default_factory=dict)
    epsilon: float | None = None
