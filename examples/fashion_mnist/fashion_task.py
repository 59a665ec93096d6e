"""Fashion-MNIST as image folders, one per site (prepare.py writes them), federated with DP: a GroupNorm CNN."""

from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.utils.data import TensorDataset

from fedbus import DataRequest, DataUnavailable, LocalData, Task, local_files

MEAN, STD = 0.2860, 0.3530  # of Fashion-MNIST's training pixels, scaled to 0-1


def normalize(x: torch.Tensor) -> torch.Tensor:
    return (x - MEAN) / STD


def model() -> nn.Module:  # GroupNorm, not BatchNorm: Opacus clips each sample's gradient on its own
    return nn.Sequential(
        nn.Conv2d(1, 16, 3, padding=1), nn.GroupNorm(4, 16), nn.ReLU(), nn.MaxPool2d(2),  # 16 x 14 x 14
        nn.Conv2d(16, 32, 3, padding=1), nn.GroupNorm(4, 32), nn.ReLU(), nn.MaxPool2d(2),  # 32 x 7 x 7
        nn.Flatten(), nn.Linear(32 * 7 * 7, 10),
    )  # fmt: skip


def data(request: DataRequest) -> LocalData:  # this site's train/<class>/*.png and test/<class>/*.png (28x28 gray)
    if request.location is None:
        raise DataUnavailable("fashion_gn_cnn trains on each site's own folder: give fedbus run --client-data DIR")
    return local_files(request.location, transform=normalize)


def heldout(folder: Path | None) -> TensorDataset:  # images of Fashion-MNIST's test split: the aggregator's test set
    with np.load(Path(__file__).parent / "heldout.npz") as arrays:
        x, y = torch.from_numpy(arrays["x"]), torch.from_numpy(arrays["y"])
    return TensorDataset(normalize(x.unsqueeze(1).float() / 255), y.long())


task = Task(
    name="fashion_gn_cnn",
    model=model,
    data=data,
    test_data=heldout,
    preprocessing={"input_shape": [1, 28, 28], "scale": 1 / 255, "normalize": {"mean": [MEAN], "std": [STD]}},
)
