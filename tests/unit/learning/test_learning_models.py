from __future__ import annotations

import numpy as np
import pytest
import torch
from opacus.validators import ModuleValidator
from torch import nn

from contracts.catalog import DATASETS, MODELS
from contracts.errors import ConfigError
from workers.learning.datasets import DATASET_NAMES, DOWNLOADERS
from workers.learning.models import (
    MODEL_DATASET,
    MODEL_NAMES,
    MaxPool2d,
    build_model,
    load_numpy,
    memory_estimate_bytes,
    parameter_count,
    to_numpy,
)


@pytest.mark.parametrize(("name", "expected"), [("mnist_dp_cnn", 26_010), ("mnist_cnn", 1_663_370)])
def test_mnist_models_have_the_papers_parameter_counts(name: str, expected: int) -> None:
    assert parameter_count(build_model(name, seed=0)) == expected


@pytest.mark.parametrize(
    ("kernel", "stride", "shape"), [(2, 1, (7, 16, 14, 14)), (2, None, (5, 32, 28, 28)), (3, 2, (2, 3, 9, 9))]
)
def test_the_channels_last_max_pool_gives_nn_max_pool2ds_values_and_gradients(
    kernel: int, stride: int | None, shape: tuple[int, ...]
) -> None:
    x = torch.randn(*shape, generator=torch.Generator().manual_seed(0))
    x[0, 0, :2, :2] = 1.0  # a window of ties: the gradient goes to the same element in both
    ours, theirs = x.clone().requires_grad_(), x.clone().requires_grad_()
    upstream = torch.randn_like(nn.MaxPool2d(kernel, stride)(x))

    out = MaxPool2d(kernel, stride)(ours)
    expected = nn.MaxPool2d(kernel, stride)(theirs)
    (out * upstream).sum().backward()
    (expected * upstream).sum().backward()

    assert out.is_contiguous()
    assert torch.equal(out, expected)
    assert ours.grad is not None and theirs.grad is not None
    assert torch.equal(ours.grad, theirs.grad)


def test_cifar_model_is_of_moderate_size() -> None:
    assert 100_000 <= parameter_count(build_model("cifar10_cnn", seed=0)) <= 600_000


@pytest.mark.parametrize("name", MODELS)
def test_every_model_is_accepted_by_opacus(name: str) -> None:
    model = build_model(name, seed=0)

    errors = ModuleValidator.validate(model, strict=False)

    assert errors == []


def test_the_learning_registries_cover_exactly_the_catalog() -> None:
    assert sorted(MODEL_NAMES) == sorted(MODELS)
    assert sorted(DATASET_NAMES) == sorted(DOWNLOADERS) == sorted(DATASETS)
    assert MODEL_DATASET == MODELS


@pytest.mark.parametrize("name", MODELS)
def test_every_model_takes_the_input_of_its_catalog_dataset(name: str) -> None:
    # The estimate runs one forward pass on a zero sample shaped like MODELS[name]'s images.
    estimate = memory_estimate_bytes(name, batch_size=1, dp=False)

    assert MODELS[name] in DATASETS
    assert estimate > 0


def test_unknown_model_name_is_a_config_error_listing_the_choices() -> None:
    with pytest.raises(ConfigError) as info:
        build_model("resnet9000", seed=0)

    assert info.value.field == "model"
    assert "'resnet9000'" in info.value.message
    assert all(name in info.value.message for name in MODEL_NAMES)


def test_same_seed_gives_same_weights_and_another_seed_differs() -> None:
    a, b, c = (to_numpy(build_model("mnist_dp_cnn", seed=s)) for s in (7, 7, 8))

    assert all(np.array_equal(a[k], b[k]) for k in a)
    assert not all(np.array_equal(a[k], c[k]) for k in a)


def test_memory_estimate_grows_with_batch_size_under_dp() -> None:
    small = memory_estimate_bytes("mnist_cnn", batch_size=16, dp=True)
    large = memory_estimate_bytes("mnist_cnn", batch_size=256, dp=True)
    plain = memory_estimate_bytes("mnist_cnn", batch_size=256, dp=False)

    # The per-sample gradients alone are batch * params * 4 bytes.
    assert large - small >= (256 - 16) * 1_663_370 * 4
    assert plain < large


def test_numpy_weights_round_trip_into_another_model() -> None:
    source = to_numpy(build_model("mnist_dp_cnn", seed=1))
    target = build_model("mnist_dp_cnn", seed=2)

    load_numpy(target, source)

    loaded = to_numpy(target)
    assert loaded.keys() == source.keys()
    assert all(loaded[k].dtype == np.float32 and np.array_equal(loaded[k], source[k]) for k in source)


def test_loading_weights_of_another_model_is_a_config_error() -> None:
    other = to_numpy(build_model("mnist_cnn", seed=0))

    with pytest.raises(ConfigError, match="weights"):
        load_numpy(build_model("mnist_dp_cnn", seed=0), other)


def test_loading_a_wrong_shape_is_a_config_error() -> None:
    weights = to_numpy(build_model("mnist_dp_cnn", seed=0))
    key = next(iter(weights))
    weights[key] = np.zeros((1, 2), dtype=np.float32)

    with pytest.raises(ConfigError, match="shape"):
        load_numpy(build_model("mnist_dp_cnn", seed=0), weights)
