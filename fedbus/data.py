"""Where a client's data comes from: its own files, or, in a simulation, its share of one global data set.

A deployed client is given a folder (`FEDBUS_CLIENT_DATA`, `fedbus client --data DIR`); a task's `data`
function receives it in a `DataRequest` and returns the client's `LocalData`. Two layouts are read
without any code, by `local_files`:

- numpy: ``train.npz`` (and optionally ``test.npz``), each with an array ``x`` of samples and ``y`` of
  integer labels, as many of one as of the other;
- images: ``train/<class>/<image>`` (and optionally ``test/<class>/<image>``), torchvision's ImageFolder
  layout, every image of one size.

`fedbus run`, `fedbus up` and the benchmarks simulate a federation instead: a client without a folder
gets a `Simulation`, its share of a global data set split by the run's partition scheme.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt

from fedbus.errors import DataUnavailable
from fedbus.partition import partition

__all__ = [
    "DataRequest",
    "LocalData",
    "Samples",
    "Simulation",
    "Transform",
    "image_folder",
    "local_files",
    "npz_files",
]

if TYPE_CHECKING:
    import torch
    from torch.utils.data import Dataset, TensorDataset

    Samples = Dataset[tuple[torch.Tensor, ...]]
    """A map-style dataset of (sample, label) tensor pairs, e.g. a TensorDataset."""
    Transform = Callable[[torch.Tensor], torch.Tensor]
    """Applied to a whole split of samples (float32, N x ...) once, when it is read: e.g. normalization."""


def __getattr__(name: str) -> Any:
    """`Samples` and `Transform`, made on first use: importing this module (a client's own process does, to
    say what it trains on) does not import torch; reading the data does."""
    if name not in ("Samples", "Transform"):
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    import torch
    from torch.utils.data import Dataset

    aliases = {"Samples": Dataset[tuple[torch.Tensor, ...]], "Transform": Callable[[torch.Tensor], torch.Tensor]}
    globals().update(aliases)
    return aliases[name]


_IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".pgm", ".ppm")


@dataclass(frozen=True, slots=True, kw_only=True)
class Simulation:
    """A simulated client's share of a global data set: part `index` of `clients`, split by `scheme`
    (iid, dirichlet:<alpha> or shards:<k>) with `seed`, over the first `limit` samples (all when None).
    Every simulated client computes the same split on its own."""

    scheme: str
    clients: int
    index: int
    seed: int
    limit: int | None = None
    dataset_dir: Path | None = None  # where the global data set is ($FEDBUS_DATA_DIR when None)

    @classmethod
    def centralized(cls, *, limit: int | None = None, dataset_dir: Path | None = None) -> DataRequest:
        """A request for the first `limit` samples of the global data set, unsplit: one client holding it all
        (a centralized baseline)."""
        return DataRequest(
            simulation=cls(scheme="iid", clients=1, index=0, seed=0, limit=limit, dataset_dir=dataset_dir)
        )

    def indices(self, labels: npt.ArrayLike) -> npt.NDArray[np.int64]:
        """This client's sorted sample indices into the global training set whose labels are `labels`."""
        y = np.asarray(labels).reshape(-1)
        if self.limit is not None:
            y = y[: self.limit]
        return partition(y, self.clients, self.scheme, seed=self.seed)[self.index]


@dataclass(frozen=True, slots=True, kw_only=True)
class DataRequest:
    """What a task's `data` function is asked for: the client's own folder, or a simulated share."""

    location: Path | None = None
    simulation: Simulation | None = None

    def __post_init__(self) -> None:
        if (self.location is None) == (self.simulation is None):
            raise ValueError("a DataRequest has either a location or a simulation")


@dataclass(frozen=True, slots=True, kw_only=True, eq=False)
class LocalData:
    """A client's data: samples to train on and, optionally, held-out samples to evaluate the global model on.

    Items are ``(sample, label)`` pairs of tensors; fedbus batches them, samples them (Poisson sampling
    under DP) and never sends them anywhere.
    """

    train: Samples
    test: Samples | None = None


def local_files(folder: str | Path, *, transform: Transform | None = None) -> LocalData:
    """The data in `folder`, in either built-in layout (numpy or images; see the module docstring)."""
    root = _folder(folder)
    if (root / "train.npz").is_file():
        return npz_files(root, transform=transform)
    if (root / "train").is_dir():
        return image_folder(root, transform=transform)
    raise DataUnavailable(
        f"{root} holds neither train.npz (numpy: arrays x and y) nor a train/ folder of class folders of images"
    )


def npz_files(folder: str | Path, *, transform: Transform | None = None) -> LocalData:
    """``train.npz`` and the optional ``test.npz`` in `folder`, each with arrays ``x`` (samples) and ``y``
    (integer labels); x becomes float32 (then `transform`), y int64."""
    root = _folder(folder)
    train = _npz(root / "train.npz", transform)
    test = _npz(root / "test.npz", transform) if (root / "test.npz").exists() else None
    if test is not None:
        _same_shape(root, train, test)
    return LocalData(train=train, test=test)


def image_folder(folder: str | Path, *, transform: Transform | None = None) -> LocalData:
    """``train/<class>/*`` and the optional ``test/<class>/*`` in `folder`, read with torchvision's
    ImageFolder into memory as float32 in [0, 1] (then `transform`); labels are the class folders' indices
    in sorted order, the same for both splits."""
    root = _folder(folder)
    train_dir = root / "train"
    classes = sorted(p.name for p in train_dir.iterdir() if p.is_dir()) if train_dir.is_dir() else []
    if not classes:
        raise DataUnavailable(f"{train_dir} has no class folders (expected train/<class>/<image>)")
    train = _images(train_dir, classes, transform)
    test = _images(root / "test", classes, transform) if (root / "test").is_dir() else None
    if test is not None:
        _same_shape(root, train, test)
    return LocalData(train=train, test=test)


def _folder(folder: str | Path) -> Path:
    root = Path(folder).expanduser()
    if not root.exists():
        raise DataUnavailable(f"data folder {root} does not exist")
    if not root.is_dir():
        raise DataUnavailable(f"data folder {root} is not a folder")
    return root


def _npz(path: Path, transform: Transform | None) -> TensorDataset:
    import torch

    try:
        with np.load(path, allow_pickle=False) as arrays:
            missing = sorted({"x", "y"} - set(arrays.files))
            if missing:
                raise DataUnavailable(f"{path} has no array {missing[0]!r} (it holds {sorted(arrays.files)})")
            x, y = arrays["x"], arrays["y"]
    except (OSError, ValueError, EOFError) as exc:
        raise DataUnavailable(f"{path} is not a readable .npz file: {exc}") from exc
    if x.dtype.kind not in "biuf" or y.dtype.kind not in "biu":
        raise DataUnavailable(f"{path}: x must be numbers and y integer labels (got {x.dtype} and {y.dtype})")
    return _dataset(path, torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)), torch.from_numpy(y), transform)


def _images(split: Path, classes: list[str], transform: Transform | None) -> TensorDataset:
    import torch
    from PIL import Image, UnidentifiedImageError  # torchvision's own dependency
    from torchvision.transforms.functional import pil_to_tensor

    samples: list[torch.Tensor] = []
    labels: list[int] = []
    shape: tuple[int, ...] | None = None
    for label, name in enumerate(classes):
        folder = split / name
        files = sorted(p for p in folder.iterdir() if p.suffix.lower() in _IMAGE_SUFFIXES) if folder.is_dir() else []
        for file in files:
            try:
                with Image.open(file) as image:
                    tensor = pil_to_tensor(image)
            except (OSError, UnidentifiedImageError) as exc:
                raise DataUnavailable(f"{file} is not a readable image: {exc}") from exc
            if shape is None:
                shape = tuple(tensor.shape)
            elif tuple(tensor.shape) != shape:
                raise DataUnavailable(
                    f"{file} is {tuple(tensor.shape)} (channels, height, width) but earlier images are {shape}: "
                    "resize them to one size"
                )
            samples.append(tensor)
            labels.append(label)
    if not samples:
        raise DataUnavailable(f"{split} has no images in its class folders")
    x = torch.stack(samples).float().div_(255.0)
    return _dataset(split, x, torch.tensor(labels), transform)


def _dataset(source: Path, x: torch.Tensor, y: torch.Tensor, transform: Transform | None) -> TensorDataset:
    import torch
    from torch.utils.data import TensorDataset

    if x.ndim < 1 or len(x) == 0:
        raise DataUnavailable(f"{source} holds no samples")
    if y.ndim != 1 or len(y) != len(x):
        raise DataUnavailable(f"{source}: {len(x)} samples but labels of shape {tuple(y.shape)}")
    if not torch.isfinite(x).all():
        raise DataUnavailable(f"{source}: samples contain NaN or infinity")
    if int(y.min()) < 0:
        raise DataUnavailable(f"{source}: labels must be 0 or more, found {int(y.min())}")
    if transform is not None:
        x = transform(x)
    return TensorDataset(x, y.to(torch.int64))


def _same_shape(root: Path, train: TensorDataset, test: TensorDataset) -> None:
    a, b = tuple(train.tensors[0].shape[1:]), tuple(test.tensors[0].shape[1:])
    if a != b:
        raise DataUnavailable(f"{root}: train samples are {a} but test samples are {b}")
