"""fedbus' built-in tasks, written on the public Task API and registered under the entry-point group
``fedbus.tasks`` (setup.cfg) exactly as a user's package registers its own.

Each trains one of the models of `models` on one data set of `datasets`. A simulated client trains on its
share of the global training split; a client with a folder of its own reads it with `fedbus.local_files`
(``train.npz`` or ``train/<class>/<image>``: images of the data set's shape, pixels 0-255 or 0-1,
``(N, H, W)`` or ``(N, C, H, W)``) and the same normalization. The aggregator evaluates centrally on the
data set's test split.
"""

from __future__ import annotations

from functools import partial
from pathlib import Path

import torch
from torch.utils.data import TensorDataset

from contracts.catalog import CIFAR10_CNN, FASHION_MNIST_CNN, MNIST_CNN, MNIST_DP_CNN, MODELS
from fedbus.data import DataRequest, LocalData, local_files
from fedbus.errors import DataUnavailable
from fedbus.task import Task
from workers.learning.datasets import load_dataset, normalization
from workers.learning.models import INPUT_SHAPE, build_model


def _pixels(dataset: str, x: torch.Tensor) -> torch.Tensor:
    """A site's own images in the data set's normalized form: (N, C, H, W) float, as the global split."""
    expected = INPUT_SHAPE[dataset]
    if x.ndim == 3 and expected[0] == 1:
        x = x.unsqueeze(1)
    if tuple(x.shape[1:]) != expected:
        raise DataUnavailable(
            f"{dataset} images must be {expected} (channels, height, width), got {tuple(x.shape[1:])}"
        )
    if len(x) and float(x.max()) > 1.0:
        x = x / 255.0
    mean, std = normalization(dataset)
    return (x - torch.tensor(mean).view(1, -1, 1, 1)) / torch.tensor(std).view(1, -1, 1, 1)


def _data(dataset: str, request: DataRequest) -> LocalData:
    if request.location is not None:
        return local_files(request.location, transform=partial(_pixels, dataset))
    simulation = request.simulation
    assert simulation is not None  # a DataRequest has one or the other
    full = load_dataset(dataset, train=True, data_dir=simulation.dataset_dir)
    images, labels = full.batch(simulation.indices(full.labels.numpy()))
    return LocalData(train=TensorDataset(images, labels))


def _test_data(dataset: str, folder: Path | None) -> TensorDataset:
    split = load_dataset(dataset, train=False, data_dir=folder)
    return TensorDataset(*split.batch(torch.arange(len(split))))


def _task(name: str) -> Task:
    dataset = MODELS[name]
    mean, std = normalization(dataset)
    return Task(
        name=name,
        model=partial(build_model, name, seed=None),
        data=partial(_data, dataset),
        test_data=partial(_test_data, dataset),
        preprocessing={
            "input_shape": list(INPUT_SHAPE[dataset]),
            "scale": 1 / 255,
            "normalize": {"mean": list(mean), "std": list(std)},
        },
        description=f"{name} on {dataset}",
    )


MNIST_DP_CNN_TASK = _task(MNIST_DP_CNN)
MNIST_CNN_TASK = _task(MNIST_CNN)
CIFAR10_CNN_TASK = _task(CIFAR10_CNN)
FASHION_MNIST_CNN_TASK = _task(FASHION_MNIST_CNN)
