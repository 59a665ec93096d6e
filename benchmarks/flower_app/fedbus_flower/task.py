"""What the ServerApp and the ClientApp share: the run config, and weights as Flower ArrayRecords."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from flwr.app import Array, ArrayRecord, Context

MODEL = "mnist_dp_cnn"
DATASET = "mnist"
PARTITION = "iid"


@dataclass(frozen=True, slots=True)
class Task:
    rounds: int
    nodes: int
    train_limit: int | None
    eval_limit: int | None
    data_dir: str | None
    timings: str
    seed: int
    epsilon: float
    delta: float
    max_grad_norm: float
    batch_size: int
    lr: float
    momentum: float
    local_epochs: int


def task_from(context: Context) -> Task:
    c = context.run_config
    return Task(
        rounds=int(c["num-rounds"]),
        nodes=int(c["num-nodes"]),
        train_limit=int(c["train-limit"]) or None,
        eval_limit=int(c["eval-limit"]) or None,
        data_dir=str(c["data-dir"]) or None,
        timings=str(c["timings"]),
        seed=int(c["seed"]),
        epsilon=float(c["epsilon"]),
        delta=float(c["delta"]),
        max_grad_norm=float(c["max-grad-norm"]),
        batch_size=int(c["batch-size"]),
        lr=float(c["lr"]),
        momentum=float(c["momentum"]),
        local_epochs=int(c["local-epochs"]),
    )


def to_record(weights: dict[str, np.ndarray]) -> ArrayRecord:
    """Named float32 arrays, as fedbus ships them (fp32, no compression)."""
    return ArrayRecord({name: Array(np.ascontiguousarray(value, dtype=np.float32)) for name, value in weights.items()})


def from_record(record: ArrayRecord) -> dict[str, np.ndarray]:
    return {name: array.numpy() for name, array in record.items()}
