"""Samples per second of fedbus's local DP training against a bare Opacus loop, same model, batch and thread."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import torch
from opacus import PrivacyEngine
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from fedbus.data import DataRequest, Simulation
from workers.learning.datasets import load_dataset
from workers.learning.models import build_model
from workers.learning.training import LocalTrainConfig, initial_weights, train_local


def bare_opacus(data_dir: str | None, samples: int, batch: int, device: str) -> float:
    data = load_dataset("mnist", train=True, data_dir=data_dir)
    x, y = data.batch(np.arange(samples))
    model = build_model("mnist_dp_cnn", seed=0).to(device)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.5)
    loader = DataLoader(TensorDataset(x, y), batch_size=batch)
    model, optimizer, loader = PrivacyEngine().make_private(
        module=model,
        optimizer=optimizer,
        data_loader=loader,
        noise_multiplier=1.0,
        max_grad_norm=1.0,
        poisson_sampling=True,
    )
    criterion = nn.CrossEntropyLoss()
    started, seen = time.perf_counter(), 0
    for xb, yb in loader:
        xb, yb = xb.to(device), yb.to(device)
        optimizer.zero_grad()
        criterion(model(xb), yb).backward()
        optimizer.step()
        seen += len(yb)
    return seen / (time.perf_counter() - started)


def _first(samples: int, data_dir: str | None) -> DataRequest:
    return Simulation.centralized(limit=samples, dataset_dir=Path(data_dir) if data_dir else None)


def fedbus_local(data_dir: str | None, samples: int, batch: int, device: str) -> float:
    config = LocalTrainConfig(
        task="mnist_dp_cnn",
        batch_size=batch,
        lr=0.5,
        noise_multiplier=1.0,
        device=device,
    )
    result = train_local(initial_weights("mnist_dp_cnn", seed=0), _first(samples, data_dir), config, None)
    return result.num_samples / result.metrics["train_seconds"] if result.metrics["train_seconds"] else 0.0


def run(*, data_dir: str | None, samples: int, batch: int, repeats: int, device: str = "cpu") -> list[str]:
    torch.set_num_threads(1)
    fedbus_local(data_dir, min(samples, 256), batch, device)  # warm-up: first-call costs of torch and Opacus
    bare_opacus(data_dir, min(samples, 256), batch, device)
    ours, bare = [], []
    for _ in range(repeats):  # interleaved, so both see the same machine load
        ours.append(fedbus_local(data_dir, samples, batch, device))
        bare.append(bare_opacus(data_dir, samples, batch, device))
    ours.sort()
    bare.sort()
    med = len(ours) // 2
    return [
        f"`mnist_dp_cnn`, {samples:,} samples, expected batch {batch}, Poisson sampling, one torch thread, "
        f"device `{device}`.",
        "",
        "| loop | samples/s min / median / max |",
        "|---|---|",
        f"| fedbus `train_local` (DP-SGD) | {ours[0]:,.0f} / {ours[med]:,.0f} / {ours[-1]:,.0f} |",
        f"| bare Opacus loop | {bare[0]:,.0f} / {bare[med]:,.0f} / {bare[-1]:,.0f} |",
        "",
        f"fedbus's local training runs at **{ours[med] / bare[med]:.2f}x** the bare Opacus loop's speed (median).",
    ]
