"""The Task: the one thing a user writes to federate a model of their own on data of their own.

fedbus does the rest around it: it builds the model from the run's seed, wraps model, optimizer and data
loader with Opacus when the run is private (Poisson sampling, per-sample clipping, calibrated noise, the
client's privacy ledger), compresses and uploads the update, and records everything in the event log.

    from torch import nn
    from fedbus import Task, local_files

    task = Task(
        name="digits",
        model=lambda: nn.Sequential(nn.Flatten(), nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10)),
        data=lambda request: local_files(request.location),
    )
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.nn import functional

from fedbus.data import DataRequest, LocalData, Samples
from fedbus.errors import DataUnavailable, TaskError

__all__ = ["Batch", "Loss", "Metrics", "Task", "TrainStep", "accuracy", "check_private", "supervised_step"]

Batch = tuple[torch.Tensor, torch.Tensor]
Loss = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
"""(outputs, targets) -> the batch's mean loss."""
Metrics = Callable[[torch.Tensor, torch.Tensor], Mapping[str, float]]
"""(outputs, targets) -> the batch's mean of each metric; fedbus weights batches by their size."""
TrainStep = Callable[[nn.Module, Batch, Loss], torch.Tensor]
"""(model, batch, loss) -> the loss to minimize; fedbus calls backward and steps the (private) optimizer."""

_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,99}")


def accuracy(outputs: torch.Tensor, targets: torch.Tensor) -> dict[str, float]:
    """The share of samples whose highest-scoring class is the label (classification)."""
    if len(targets) == 0:
        return {"accuracy": 0.0}
    return {"accuracy": float((outputs.argmax(dim=1) == targets).float().mean().item())}


def supervised_step(model: nn.Module, batch: Batch, loss: Loss) -> torch.Tensor:
    """The default training step: the loss of the model's outputs on the batch's samples against its labels."""
    samples, targets = batch
    return loss(model(samples), targets)


@dataclass(frozen=True, slots=True, kw_only=True)
class Task:
    """What fedbus federates.

    - `name`: how runs, events and exported models refer to it (letters, digits, ``_ . -``).
    - `model`: builds a fresh, untrained `nn.Module`; fedbus seeds torch first, so the same run seed gives
      the same initial weights everywhere. Under DP it must be one Opacus can train (no BatchNorm: use
      GroupNorm, or `opacus.validators.ModuleValidator.fix`).
    - `data`: returns a client's `LocalData` for a `DataRequest` (its own folder, or a simulated share).
    - `test_data`: optional held-out data for central evaluation by the aggregator, given the aggregator's
      data folder (`FEDBUS_DATA_DIR`) or None; without it, no central accuracy is reported.
    - `loss` (cross-entropy), `metrics` (accuracy) and `train_step` (model on samples, loss against
      labels) have defaults for classification.
    - `preprocessing`: plain data describing what inputs must go through before the model (e.g.
      ``{"normalize": {"mean": [0.13], "std": [0.31]}}``); written next to every exported model.
    """

    name: str
    model: Callable[[], nn.Module]
    data: Callable[[DataRequest], LocalData]
    test_data: Callable[[Path | None], Samples | None] | None = None
    loss: Loss = functional.cross_entropy
    metrics: Metrics = accuracy
    train_step: TrainStep = supervised_step
    preprocessing: Mapping[str, Any] = field(default_factory=dict)
    description: str = ""

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not _NAME.fullmatch(self.name):
            raise TaskError(f"task name {self.name!r:.100} must be 1-100 letters, digits, '_', '.' or '-'")
        for part in ("model", "data", "loss", "metrics", "train_step"):
            if not callable(getattr(self, part)):
                raise TaskError(f"task {self.name}: {part} must be callable, got {getattr(self, part)!r:.100}")
        if self.test_data is not None and not callable(self.test_data):
            raise TaskError(f"task {self.name}: test_data must be callable or None")

    def build_model(self, seed: int) -> nn.Module:
        """The task's model with weights drawn from `seed`, without touching the caller's random state."""
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            try:
                model = self.model()
            except Exception as exc:  # the user's code: any failure is the task's, told in one line
                raise TaskError(f"task {self.name}: building the model failed: {type(exc).__name__}: {exc}") from exc
        if not isinstance(model, nn.Module):
            raise TaskError(f"task {self.name}: model() must return a torch.nn.Module, got {type(model).__name__}")
        if not any(p.requires_grad for p in model.parameters()):
            raise TaskError(f"task {self.name}: the model has no trainable parameters")
        return model

    def load(self, request: DataRequest) -> LocalData:
        """The client's data for `request`; DataUnavailable (the task's data is missing or malformed)."""
        try:
            data = self.data(request)
        except (DataUnavailable, TaskError):
            raise
        except Exception as exc:  # the user's loader: a one-line reason, the round declined, the run goes on
            raise DataUnavailable(f"task {self.name}: loading data failed: {type(exc).__name__}: {exc}") from exc
        if not isinstance(data, LocalData):
            raise TaskError(f"task {self.name}: data() must return fedbus.LocalData, got {type(data).__name__}")
        if len(data.train) == 0:  # type: ignore[arg-type]
            raise DataUnavailable(f"task {self.name}: the client's training data is empty")
        return data


def check_private(task: Task, model: nn.Module) -> None:
    """TaskError naming the first layer Opacus cannot train with per-sample gradients (e.g. BatchNorm)."""
    from opacus.validators import ModuleValidator

    errors = ModuleValidator.validate(model, strict=False)
    if not errors:
        return
    layer = next(
        (
            f"layer {name!r} ({type(module).__name__})"
            for name, module in model.named_modules()
            if name and not list(module.children()) and ModuleValidator.validate(module, strict=False)
        ),
        "the model",
    )
    reason = str(errors[0]).strip().split(". ")[0].rstrip(".")
    raise TaskError(
        f"task {task.name}: Opacus cannot train {layer} with DP: {reason} ({len(errors)} problem(s)); replace "
        "it (GroupNorm for BatchNorm) or return opacus.validators.ModuleValidator.fix(model) from the task's "
        "model function"
    )
