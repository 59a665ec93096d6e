"""Training and evaluation on a GPU give what the CPU gives (skipped where torch sees no GPU; CI has none).

Run on a machine with one: `pytest tests/unit/learning/test_cuda.py`.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fedbus import Simulation
from workers.learning.local_round import LocalTrainConfig
from workers.learning.training import check_device, evaluate, initial_weights, train_local

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="torch sees no GPU here")

MODEL = "mnist_dp_cnn"


def _config(device: str, **overrides: object) -> LocalTrainConfig:
    base: dict[str, object] = {"task": MODEL, "noise_multiplier": 1.0, "device": device, "lr": 0.5}
    return LocalTrainConfig(**{**base, **overrides})  # type: ignore[arg-type]


def test_cuda_and_cuda_0_are_accepted_and_an_absent_index_is_refused() -> None:
    assert check_device("cuda") == "cuda"
    assert check_device("cuda:0") == "cuda:0"
    with pytest.raises(Exception, match="GPU"):
        check_device(f"cuda:{torch.cuda.device_count()}")


def test_dp_training_on_cuda_returns_a_finite_cpu_update_and_spends_the_same_epsilon_as_on_cpu() -> None:
    base = initial_weights(MODEL, seed=0)
    data = Simulation.centralized(limit=640)

    on_gpu = train_local(base, data, _config("cuda"), None)
    on_cpu = train_local(base, data, _config("cpu"), None)

    assert on_gpu.delta.keys() == base.keys()
    assert all(isinstance(d, np.ndarray) and d.dtype == np.float32 for d in on_gpu.delta.values())
    assert all(np.isfinite(d).all() and d.shape == base[k].shape for k, d in on_gpu.delta.items())
    assert on_gpu.steps == on_cpu.steps and on_gpu.num_samples == on_cpu.num_samples
    assert on_gpu.epsilon == pytest.approx(on_cpu.epsilon)  # the accountant does not depend on the device


def test_plain_sgd_on_cuda_follows_the_cpu_trajectory() -> None:
    base = initial_weights(MODEL, seed=0)
    data = Simulation.centralized(limit=512)
    plain = {"dp": False, "batch_size": 64, "lr": 0.05, "max_steps": 4}

    on_gpu = train_local(base, data, _config("cuda", **plain), None)
    on_cpu = train_local(base, data, _config("cpu", **plain), None)

    for key in base:  # same batches, same steps: only float rounding differs between the devices
        np.testing.assert_allclose(on_gpu.delta[key], on_cpu.delta[key], rtol=1e-2, atol=1e-4)


def test_evaluation_on_cuda_matches_the_cpu() -> None:
    weights = initial_weights(MODEL, seed=0)

    on_gpu = evaluate(weights, task=MODEL, data_dir=None, limit=1000, device="cuda")
    on_cpu = evaluate(weights, task=MODEL, data_dir=None, limit=1000, device="cpu")

    assert on_gpu["accuracy"] == pytest.approx(on_cpu["accuracy"], abs=2e-3)
    assert on_gpu["loss"] == pytest.approx(on_cpu["loss"], rel=1e-3)
