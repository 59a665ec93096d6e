from __future__ import annotations

import pickle

import numpy as np
import pytest
import torch

from contracts.errors import ConfigError
from fedbus import DataRequest, Simulation, TaskError
from workers.learning.privacy import PrivacyLedger
from workers.learning.training import (
    LocalTrainConfig,
    LocalTrainResult,
    check_device,
    evaluate,
    initial_weights,
    train_local,
)

MODEL = "mnist_dp_cnn"


def samples(count: int) -> DataRequest:
    """The first `count` MNIST training samples, unsplit."""
    return Simulation.centralized(limit=count)


def _config(**overrides: object) -> LocalTrainConfig:
    base: dict[str, object] = {"task": MODEL, "noise_multiplier": 1.0}
    return LocalTrainConfig(**{**base, **overrides})  # type: ignore[arg-type]


def _apply(weights: dict[str, np.ndarray], result: LocalTrainResult) -> dict[str, np.ndarray]:
    return {k: weights[k] + result.delta[k] for k in weights}


def test_dp_training_returns_a_finite_delta_with_the_models_keys_and_spends_epsilon() -> None:
    base = initial_weights(MODEL, seed=0)

    result = train_local(base, samples(600), _config(lr=0.5), None)

    assert result.delta.keys() == base.keys()
    assert all(d.dtype == np.float32 and d.shape == base[k].shape for k, d in result.delta.items())
    assert all(np.isfinite(d).all() for d in result.delta.values())
    assert any(np.abs(d).max() > 0 for d in result.delta.values())
    assert result.num_samples == 600 and result.steps == 10  # ceil(600 / 64) Poisson batches
    assert result.epsilon is not None and result.epsilon > 0
    assert result.epsilon == pytest.approx(PrivacyLedger.from_dict(result.ledger).epsilon(1e-5))
    assert {"loss", "accuracy", "samples_per_second", "train_seconds"} <= result.metrics.keys()


def test_dp_ledger_carries_over_so_the_second_round_spends_more() -> None:
    base = initial_weights(MODEL, seed=0)
    first = train_local(base, samples(300), _config(max_steps=3), None)

    second = train_local(_apply(base, first), samples(300), _config(max_steps=3, seed=1), first.ledger)

    assert first.epsilon is not None and second.epsilon is not None
    assert second.epsilon > first.epsilon
    assert sum(steps for _, _, steps in second.ledger["history"]) == 6


def test_same_seed_reproduces_the_same_update() -> None:
    base = initial_weights(MODEL, seed=0)

    a, b = (train_local(base, samples(200), _config(max_steps=2), None) for _ in range(2))

    assert all(np.array_equal(a.delta[k], b.delta[k]) for k in a.delta)


def test_plain_sgd_improves_test_accuracy_over_the_initial_model() -> None:
    base = initial_weights(MODEL, seed=0)
    before = evaluate(base, task=MODEL, data_dir=None, limit=500)

    result = train_local(base, samples(1000), _config(dp=False, epochs=3, batch_size=32, lr=0.1), None)
    after = evaluate(_apply(base, result), task=MODEL, data_dir=None, limit=500)

    assert result.epsilon is None and result.ledger["history"] == []
    assert after["accuracy"] > before["accuracy"] + 0.3
    assert after["loss"] < before["loss"]


def test_evaluate_with_a_limit_reports_loss_and_accuracy() -> None:
    metrics = evaluate(initial_weights(MODEL, seed=0), task=MODEL, data_dir=None, limit=300, batch_size=128)

    assert set(metrics) == {"loss", "accuracy"}
    assert 0.0 <= metrics["accuracy"] <= 1.0 and metrics["loss"] > 0


def test_dp_without_noise_multiplier_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="noise_multiplier"):
        train_local(initial_weights(MODEL, seed=0), samples(10), _config(noise_multiplier=None), None)


def test_an_unknown_task_is_a_task_error_naming_it() -> None:
    with pytest.raises(TaskError, match="unknown task 'resnet'"):
        train_local(initial_weights(MODEL, seed=0), samples(10), _config(task="resnet"), None)


def test_config_survives_pickling_into_a_process_pool_worker() -> None:
    config = _config(max_steps=1)

    assert pickle.loads(pickle.dumps(config)) == config


def test_check_device_accepts_cpu_and_names_the_field_otherwise() -> None:
    assert check_device("cpu") == "cpu"
    for bad in ("tpu", "cuda:x", "CUDA"):
        with pytest.raises(ConfigError) as info:
            check_device(bad)
        assert info.value.field == "device"


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU")
def test_cuda_without_a_gpu_is_a_config_error_not_a_crash_later() -> None:
    with pytest.raises(ConfigError, match="no CUDA GPU"):
        check_device("cuda")


def test_fedprox_pulls_local_training_toward_the_rounds_model() -> None:
    base = initial_weights(MODEL, seed=0)

    def drift(mu: float, dp: bool) -> float:
        result = train_local(base, samples(256), _config(max_steps=4, lr=0.5, dp=dp, proximal_mu=mu), None)
        return float(np.sqrt(sum(float((d.astype(np.float64) ** 2).sum()) for d in result.delta.values())))

    for dp in (False, True):
        free, held = drift(0.0, dp), drift(1.0, dp)
        assert 0 < held < free
        assert drift(1000.0, dp) < 1e-6  # a pull of lr * mu >= 1 goes all the way back after each step
