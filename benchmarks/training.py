"""Samples per second of fedbus's local DP training against a bare Opacus loop, same model, batch and thread."""

from __future__ import annotations

import statistics
import time
from pathlib import Path

import numpy as np
import torch
from opacus import PrivacyEngine
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from benchmarks.machine import min_median_max
from fedbus.data import DataRequest, Simulation
from workers.learning.datasets import load_dataset
from workers.learning.local_round import LocalTrainConfig
from workers.learning.models import build_model
from workers.learning.training import initial_weights, train_local


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


def devices_here() -> tuple[str, ...]:
    """The CPU, and the first GPU where torch sees one: the devices the table compares side by side."""
    return ("cpu", "cuda") if torch.cuda.is_available() else ("cpu",)


def run(
    *,
    data_dir: str | None,
    samples: int,
    batches: tuple[int, ...],
    repeats: int,
    devices: tuple[str, ...] = ("cpu",),
    gpu_samples_factor: int = 4,
) -> list[str]:
    """fedbus's `train_local` against a bare Opacus loop for each device and expected batch size.

    A GPU trains on `gpu_samples_factor` times the samples, so that a run is long enough to time.
    """
    torch.set_num_threads(1)
    rows, speed = [], {}
    for device in devices:
        count = samples * (gpu_samples_factor if device != "cpu" else 1)
        for batch in batches:
            fedbus_local(data_dir, min(count, 4 * batch), batch, device)  # warm-up: first-call costs, CUDA context
            bare_opacus(data_dir, min(count, 4 * batch), batch, device)
            ours, bare = [], []
            for _ in range(repeats):  # interleaved, so both see the same machine load
                ours.append(fedbus_local(data_dir, count, batch, device))
                bare.append(bare_opacus(data_dir, count, batch, device))
            speed[device, batch] = statistics.median(ours)
            rows.append(
                f"| `{device}` | {batch} | {count:,} | {min_median_max(ours, ',.0f')} | {min_median_max(bare, ',.0f')} "
                f"| {statistics.median(ours) / statistics.median(bare):.2f}x |"
            )
    lines = [
        "`mnist_dp_cnn`, DP-SGD with Poisson sampling, one torch thread; "
        f"{repeats} runs of each loop, interleaved. Devices: {', '.join(f'`{d}`' for d in devices)}.",
        "",
        "| device | expected batch | samples | fedbus `train_local` samples/s min / median / max "
        "| bare Opacus loop samples/s | fedbus / bare (median) |",
        "|---|---|---|---|---|---|",
        *rows,
        "",
    ]
    gpus = [d for d in devices if d != "cpu"]
    if gpus:
        ratios = ", ".join(f"{speed[gpus[0], b] / speed['cpu', b]:.1f}x at batch {b}" for b in batches)
        lines.append(f"fedbus on `{gpus[0]}` trains {ratios} as fast as on one CPU thread (medians).")
    else:
        lines.append(
            "No GPU on this machine: [cuda/benchmarks.md](cuda/benchmarks.md) has this table from one with a GPU."
        )
    return lines
