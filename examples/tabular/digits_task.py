"""scikit-learn's digits, one data folder per site (prepare.py writes them), federated with DP: a small MLP."""

from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.utils.data import TensorDataset

from fedbus import DataRequest, DataUnavailable, LocalData, Task, local_files


def data(request: DataRequest) -> LocalData:  # this site's folder: train.npz, test.npz (x: 64 pixels of 0-16, y)
    if request.location is None:
        raise DataUnavailable("digits_mlp trains on each site's own folder: give fedbus run --client-data DIR")
    return local_files(request.location, transform=lambda x: x / 16)


def heldout(folder: Path | None) -> TensorDataset:  # digits no site holds: the aggregator's central test set
    with np.load(Path(__file__).parent / "heldout.npz") as arrays:
        return TensorDataset(torch.from_numpy(arrays["x"]).float() / 16, torch.from_numpy(arrays["y"]).long())


task = Task(
    name="digits_mlp",
    model=lambda: nn.Sequential(nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 10)),
    data=data,
    test_data=heldout,
    preprocessing={"scale": 1 / 16},
)
