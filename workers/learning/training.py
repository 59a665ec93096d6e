"""Local training of one client (DP-SGD with Opacus, or plain SGD) and evaluation on the test split.

`train_local` and `evaluate` are top-level functions with picklable arguments, so they run unchanged in a
ProcessPoolExecutor worker (use `init_worker` as its initializer). Weights go in and out as numpy.
"""

from __future__ import annotations

import re
import time
import warnings
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt
import torch
from opacus import PrivacyEngine
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from contracts.catalog import check_model
from contracts.errors import ConfigError
from contracts.tensors import TensorDict, TensorMapping
from workers.learning.datasets import load_dataset
from workers.learning.models import build_model, load_numpy, to_numpy
from workers.learning.privacy import PrivacyLedger

_process_device = "cpu"  # what `init_worker` chose for this process; a config's own `device` overrides it


def check_device(device: str) -> str:
    """`device` if torch can train on it here: "cpu", or "cuda" / "cuda:N" with a GPU torch can see."""
    if device == "cpu":
        return device
    if not re.fullmatch(r"cuda(:\d+)?", device):
        raise ConfigError("device", f"must be cpu, cuda or cuda:N, got {device!r}")
    if not torch.cuda.is_available():
        raise ConfigError("device", f"{device} asked for, but torch sees no CUDA GPU on this machine")
    index = int(device.partition(":")[2] or 0)
    if index >= torch.cuda.device_count():
        raise ConfigError("device", f"{device} asked for, but torch sees {torch.cuda.device_count()} GPU(s)")
    return device


def init_worker(device: str = "cpu") -> None:
    """Process-pool initializer: one torch thread per process (N workers use N cores, not N squared), and the
    device this process trains and evaluates on."""
    global _process_device
    torch.set_num_threads(1)
    _process_device = check_device(device)


@dataclass(frozen=True, slots=True, kw_only=True)
class LocalTrainConfig:
    """What a client needs to train one round; `noise_multiplier` is required when `dp` is on."""

    model: str
    dataset: str
    data_dir: str | None
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


@dataclass(slots=True, kw_only=True)
class LocalTrainResult:
    """The update (trained minus base weights) with what the coordinator records about it."""

    delta: TensorDict
    num_samples: int
    steps: int
    metrics: dict[str, float]
    ledger: dict[str, Any] = field(default_factory=dict)
    epsilon: float | None = None


def _check_config(config: LocalTrainConfig) -> None:
    check_model(config.model, config.dataset)
    for name in ("epochs", "batch_size"):
        if getattr(config, name) < 1:
            raise ConfigError(name, f"must be at least 1, got {getattr(config, name)}")
    if config.max_steps is not None and config.max_steps < 1:
        raise ConfigError("max_steps", f"must be at least 1 or unset, got {config.max_steps}")
    if config.dp and (config.noise_multiplier is None or config.noise_multiplier <= 0):
        raise ConfigError("noise_multiplier", "DP training needs a positive noise multiplier (plan_privacy)")
    if config.dp and config.max_grad_norm <= 0:
        raise ConfigError("max_grad_norm", f"must be positive, got {config.max_grad_norm}")


def train_local(
    base: TensorMapping,
    indices: npt.NDArray[np.integer],
    config: LocalTrainConfig,
    ledger: dict[str, Any] | None,
) -> LocalTrainResult:
    """Train from `base` on the training samples at `indices`; record DP steps into the carried `ledger`."""
    _check_config(config)
    idx = np.asarray(indices, dtype=np.int64)
    if idx.size == 0:
        raise ConfigError("indices", "a client needs at least one training sample")
    torch.set_num_threads(1)
    privacy = PrivacyLedger.from_dict(ledger) if ledger else PrivacyLedger()
    device = torch.device(config.device or _process_device)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.seed)
        model = build_model(config.model, seed=config.seed)
        load_numpy(model, base)
        model.to(device)
        images, labels = load_dataset(config.dataset, train=True, data_dir=config.data_dir).batch(idx)
        loader: DataLoader[tuple[torch.Tensor, ...]] = DataLoader(
            TensorDataset(images, labels), batch_size=config.batch_size, shuffle=True
        )
        optimizer: torch.optim.Optimizer = torch.optim.SGD(model.parameters(), lr=config.lr, momentum=config.momentum)
        module: nn.Module = model
        sample_rate = 1.0
        if config.dp:
            with warnings.catch_warnings():
                warnings.filterwarnings("ignore", message="Secure RNG turned off")
                module, optimizer, dp_loader = PrivacyEngine(accountant="rdp").make_private(
                    module=model,
                    optimizer=optimizer,
                    data_loader=loader,
                    noise_multiplier=config.noise_multiplier,
                    max_grad_norm=config.max_grad_norm,
                    poisson_sampling=True,
                )
            # Record the sample rate Opacus actually uses (1 / batches per epoch), not the planned one.
            sample_rate, loader = float(dp_loader.sample_rate), dp_loader
        with warnings.catch_warnings():
            # Opacus' hooks on the first layer fire although the input needs no gradient: expected.
            warnings.filterwarnings("ignore", message="Full backward hook is firing")
            steps, metrics = _fit(module, optimizer, loader, config, device)
    if config.dp:
        assert config.noise_multiplier is not None  # _check_config guarantees it
        privacy.record(config.noise_multiplier, sample_rate, steps)
    trained = to_numpy(model)  # `model` is the unwrapped module: keys without Opacus' "_module." prefix
    return LocalTrainResult(
        delta={k: trained[k] - np.asarray(base[k], dtype=np.float32) for k in trained},
        num_samples=int(idx.size),
        steps=steps,
        metrics=metrics,
        ledger=privacy.to_dict(),
        epsilon=privacy.epsilon(config.delta) if config.dp else None,
    )


def _fit(
    module: nn.Module,
    optimizer: torch.optim.Optimizer,
    loader: DataLoader[tuple[torch.Tensor, ...]],
    config: LocalTrainConfig,
    device: torch.device,
) -> tuple[int, dict[str, float]]:
    criterion = nn.CrossEntropyLoss()
    module.train()
    steps, seen, loss_sum, correct = 0, 0, 0.0, 0
    started = time.perf_counter()
    for _ in range(config.epochs):
        for x, y in loader:
            x, y = x.to(device), y.to(device)
            optimizer.zero_grad(set_to_none=True)
            out = module(x)
            loss = criterion(out, y)
            loss.backward()
            # A Poisson batch may be empty: the step still happens (noise only) and still counts.
            optimizer.step()
            steps += 1
            if len(y):
                seen += len(y)
                loss_sum += float(loss.item()) * len(y)
                correct += int((out.argmax(1) == y).sum().item())
            if config.max_steps is not None and steps >= config.max_steps:
                break
        if config.max_steps is not None and steps >= config.max_steps:
            break
    seconds = time.perf_counter() - started
    return steps, {
        "loss": loss_sum / max(seen, 1),
        "accuracy": correct / max(seen, 1),
        "samples_per_second": seen / seconds if seconds > 0 else 0.0,
        "train_seconds": seconds,
    }


def evaluate(
    weights: TensorMapping,
    *,
    model: str,
    dataset: str,
    data_dir: str | None,
    batch_size: int = 1000,
    limit: int | None = None,
    device: str | None = None,
) -> dict[str, float]:
    """Mean cross-entropy "loss" and "accuracy" (0-1) of `weights` on the first `limit` test samples."""
    check_model(model, dataset)
    on = torch.device(device or _process_device)
    net = build_model(model, seed=0)
    load_numpy(net, weights)
    net.to(on)
    net.eval()
    data = load_dataset(dataset, train=False, data_dir=data_dir)
    total = len(data) if limit is None else max(0, min(limit, len(data)))
    loss_sum, correct = 0.0, 0
    with torch.no_grad():
        for start in range(0, total, batch_size):
            x, y = data.batch(np.arange(start, min(start + batch_size, total)))
            x, y = x.to(on), y.to(on)
            out = net(x)
            loss_sum += float(nn.functional.cross_entropy(out, y, reduction="sum").item())
            correct += int((out.argmax(1) == y).sum().item())
    return {"loss": loss_sum / max(total, 1), "accuracy": correct / max(total, 1)}


def initial_weights(model: str, *, seed: int) -> TensorDict:
    """The seeded initial weights of `model` as numpy (the run's model version 0)."""
    return to_numpy(build_model(model, seed=seed))
