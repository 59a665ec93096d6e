"""Model factory by name, sizes, memory estimates and the numpy form of weights.

Every model here is Opacus-compatible (no BatchNorm, only layers with per-sample gradient support), so the
same network trains with or without DP-SGD.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from functools import cache

import numpy as np
import torch
from torch import nn

from contracts.catalog import (
    CIFAR10,
    CIFAR10_CNN,
    FASHION_MNIST,
    FASHION_MNIST_CNN,
    MNIST,
    MNIST_CNN,
    MNIST_DP_CNN,
    MODELS,
    check_model,
)
from contracts.errors import ConfigError
from contracts.tensors import TensorDict, TensorMapping


class MaxPool2d(nn.MaxPool2d):
    """`nn.MaxPool2d` with the same values and gradients, computed in channels-last layout on the CPU.

    PyTorch's CPU kernel for the default (NCHW) layout is not vectorized across channels; on one thread it is
    about 3x slower than the channels-last one, copies both ways included, and it was a quarter of a DP-SGD
    step of `mnist_dp_cnn` and two thirds of its evaluation. Elsewhere (CUDA, 3-d inputs) it is `nn.MaxPool2d`."""

    def forward(self, input: torch.Tensor) -> torch.Tensor:  # nn.MaxPool2d's own parameter name
        if input.device.type != "cpu" or input.dim() != 4 or self.return_indices:
            out: torch.Tensor = super().forward(input)
            return out
        pooled: torch.Tensor = super().forward(input.contiguous(memory_format=torch.channels_last))
        return pooled.contiguous()


def _mnist_dp_cnn() -> nn.Module:
    # Papernot et al. 2020, "Tempered sigmoid activations for deep learning with differential privacy":
    # a tanh CNN small enough (26,010 params) that per-sample gradients stay cheap.
    return nn.Sequential(
        nn.Conv2d(1, 16, 8, stride=2, padding=3),
        nn.Tanh(),
        MaxPool2d(2, 1),
        nn.Conv2d(16, 32, 4, stride=2),
        nn.Tanh(),
        MaxPool2d(2, 1),
        nn.Flatten(),
        nn.Linear(32 * 4 * 4, 32),
        nn.Tanh(),
        nn.Linear(32, 10),
    )


def _mnist_cnn() -> nn.Module:
    # McMahan et al. 2017 (FedAvg), "CNN" for MNIST: 1,663,370 params with 'same' padding.
    return nn.Sequential(
        nn.Conv2d(1, 32, 5, padding=2),
        nn.ReLU(),
        MaxPool2d(2),
        nn.Conv2d(32, 64, 5, padding=2),
        nn.ReLU(),
        MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(64 * 7 * 7, 512),
        nn.ReLU(),
        nn.Linear(512, 10),
    )


def _conv_block(c_in: int, c_out: int) -> list[nn.Module]:
    # GroupNorm instead of BatchNorm: BatchNorm mixes samples, which breaks per-sample clipping.
    return [nn.Conv2d(c_in, c_out, 3, padding=1), nn.GroupNorm(8, c_out), nn.ReLU()]


def _cifar10_cnn() -> nn.Module:
    return nn.Sequential(
        *_conv_block(3, 32),
        *_conv_block(32, 32),
        MaxPool2d(2),
        *_conv_block(32, 64),
        *_conv_block(64, 64),
        MaxPool2d(2),
        *_conv_block(64, 128),
        MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(128 * 4 * 4, 128),
        nn.ReLU(),
        nn.Linear(128, 10),
    )


_FACTORIES: dict[str, Callable[[], nn.Module]] = {
    MNIST_DP_CNN: _mnist_dp_cnn,
    MNIST_CNN: _mnist_cnn,
    CIFAR10_CNN: _cifar10_cnn,
    # Papernot et al. 2020 train the same tanh CNN on Fashion-MNIST (86.1% at epsilon 2.7, centrally).
    FASHION_MNIST_CNN: _mnist_dp_cnn,
}
INPUT_SHAPE: Mapping[str, tuple[int, int, int]] = {MNIST: (1, 28, 28), CIFAR10: (3, 32, 32), FASHION_MNIST: (1, 28, 28)}
MODEL_NAMES: tuple[str, ...] = tuple(_FACTORIES)  # what this registry builds; a test pins it to the catalog
MODEL_DATASET: Mapping[str, str] = MODELS
_FLOAT_BYTES = 4


def check_model_name(name: str) -> None:
    """Raise ConfigError("model", ...) unless `name` is one of the catalog's MODELS."""
    check_model(name)


def build_model(name: str, *, seed: int | None) -> nn.Module:
    """Build the named model with weights initialized from `seed` (same seed, same weights); None draws them
    from torch's current random state (a Task seeds it first)."""
    check_model_name(name)
    if seed is None:
        return _FACTORIES[name]()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return _FACTORIES[name]()


def parameter_count(model: nn.Module) -> int:
    """Number of trainable scalars in `model`."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


@cache
def _sizes(name: str) -> tuple[int, int]:
    """(parameters, activation scalars per sample), the latter measured with one forward pass."""
    model = build_model(name, seed=0)
    activations = 0

    def count(_module: nn.Module, _inputs: object, output: torch.Tensor) -> None:
        nonlocal activations
        activations += output.numel()

    for module in model.modules():
        if not list(module.children()):
            module.register_forward_hook(count)
    with torch.no_grad():
        model(torch.zeros(1, *INPUT_SHAPE[MODEL_DATASET[name]]))
    return parameter_count(model), activations


def memory_estimate_bytes(name: str, *, batch_size: int, dp: bool) -> int:
    """Rough peak training memory of one client, in bytes (float32 everywhere).

    P = parameters, A = activation scalars per sample, B = batch size:
        4 * (3 P            weights, gradients, optimizer momentum
             + 2 B A        activations kept for backward, and their gradients
             + B P if dp)   Opacus per-sample gradients (grad_sample), the dominant term under DP
    """
    check_model_name(name)
    params, activations = _sizes(name)
    scalars = 3 * params + 2 * batch_size * activations
    if dp:
        scalars += batch_size * params
    return scalars * _FLOAT_BYTES


def to_numpy(model: nn.Module) -> TensorDict:
    """The model's state_dict as float32 numpy copies (safe to keep after the model changes)."""
    return {k: v.detach().cpu().numpy().astype(np.float32, copy=True) for k, v in model.state_dict().items()}


def load_numpy(model: nn.Module, weights: TensorMapping) -> None:
    """Load numpy weights into `model`; keys and shapes must match its state_dict exactly."""
    state = model.state_dict()
    missing, unexpected = sorted(set(state) - set(weights)), sorted(set(weights) - set(state))
    if missing or unexpected:
        raise ConfigError("weights", f"keys do not match the model: missing {missing}, unexpected {unexpected}")
    for key, current in state.items():
        if tuple(weights[key].shape) != tuple(current.shape):
            raise ConfigError("weights", f"{key}: shape {tuple(weights[key].shape)} != model's {tuple(current.shape)}")
    model.load_state_dict(
        {k: torch.tensor(np.asarray(weights[k], dtype=np.float32), dtype=v.dtype) for k, v in state.items()}
    )
