"""Bytes per update, ratio against fp32 and reconstruction error, on a real MNIST update."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from benchmarks.machine import fmt, timed
from contracts.compression import ErrorFeedback, compress_update, decompress_update, parse_compression
from contracts.tensors import TensorDict
from fedbus.data import Simulation
from workers.learning.local_round import LocalTrainConfig
from workers.learning.training import initial_weights, train_local

CODECS = ("fp32", "fp16", "int8", "topk:0.1+int8", "topk:0.01+int8")


def real_update(data_dir: str | None, model: str) -> TensorDict:
    base = initial_weights(model, seed=0)
    config = LocalTrainConfig(task=model, dp=False, lr=0.1, batch_size=64)
    first = Simulation.centralized(limit=2000, dataset_dir=Path(data_dir) if data_dir else None)
    return train_local(base, first, config, None).delta


def run(*, data_dir: str | None, model: str, repeats: int) -> list[str]:
    update = real_update(data_dir, model)
    dense = np.concatenate([v.ravel() for v in update.values()])
    fp32_bytes = compress_update(update, parse_compression("fp32")).wire_bytes
    lines = [
        f"Model `{model}` ({dense.size:,} parameters); the update is one client's first round on 2,000 MNIST samples.",
        "",
        "| codec | bytes per update | ratio vs fp32 | relative L2 error | compress (min/median/max) |",
        "|---|---|---|---|---|",
    ]
    for codec in CODECS:
        spec = parse_compression(codec)
        packed = compress_update(update, spec, ErrorFeedback() if spec.lossy else None)
        restored = decompress_update(packed.payload)
        error = np.linalg.norm(np.concatenate([restored[k].ravel() for k in update]) - dense) / np.linalg.norm(dense)
        seconds = timed(lambda spec=spec: compress_update(update, spec), repeats)  # type: ignore[misc]
        ratio = fp32_bytes / packed.wire_bytes
        lines.append(f"| {codec} | {packed.wire_bytes:,} | {ratio:.1f}x | {error:.4f} | {fmt(seconds)} |")
    lines += ["", "Top-k codecs keep the dropped mass in the client's error-feedback residual for the next round."]
    return lines
