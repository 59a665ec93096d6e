"""Write the Fashion-MNIST example's sites as image folders, from a small subset of Fashion-MNIST.

    python examples/fashion_mnist/prepare.py [--sites 3] [--per-site 600] [--out examples/fashion_mnist]

OUT/sites/site-N/ gets train/<class>/<n>.png and test/<class>/<n>.png (28x28 grayscale; the class
folders are named "0_tshirt_top" ... "9_ankle_boot", so that their sorted order is the label), disjoint
draws from Fashion-MNIST's training split; OUT/heldout.npz gets images of its test split (x: uint8
N x 28 x 28, y), for the aggregator's central evaluation.

Fashion-MNIST is read from Debian's package (apt-get install dataset-fashion-mnist:
/usr/share/datasets/fashion-mnist) when it is there, else with torchvision (downloaded into --data-dir
the first time).
"""

from __future__ import annotations

import argparse
import gzip
import os
from pathlib import Path

import numpy as np
import numpy.typing as npt
from PIL import Image

CLASSES = ("tshirt_top", "trouser", "pullover", "dress", "coat", "sandal", "shirt", "sneaker", "bag", "ankle_boot")
DEBIAN = Path("/usr/share/datasets/fashion-mnist")
HELDOUT = 1000

Split = tuple[npt.NDArray[np.uint8], npt.NDArray[np.int64]]


def load(train: bool, data_dir: Path) -> Split:
    """Fashion-MNIST's training or test split: images (N, 28, 28) uint8 and labels."""
    prefix = "train" if train else "t10k"
    images, labels = DEBIAN / f"{prefix}-images-idx3-ubyte.gz", DEBIAN / f"{prefix}-labels-idx1-ubyte.gz"
    if images.is_file() and labels.is_file():
        with gzip.open(images) as f:
            x = np.frombuffer(f.read(), dtype=np.uint8, offset=16).reshape(-1, 28, 28)
        with gzip.open(labels) as f:
            y = np.frombuffer(f.read(), dtype=np.uint8, offset=8).astype(np.int64)
        return x, y
    from torchvision.datasets import FashionMNIST

    dataset = FashionMNIST(root=str(data_dir), train=train, download=True)
    return dataset.data.numpy(), dataset.targets.numpy().astype(np.int64)


def write_images(folder: Path, x: npt.NDArray[np.uint8], y: npt.NDArray[np.int64]) -> None:
    for label, name in enumerate(CLASSES):
        (folder / f"{label}_{name}").mkdir(parents=True, exist_ok=True)
    for number, (image, label) in enumerate(zip(x, y, strict=True)):
        Image.fromarray(image).save(folder / f"{label}_{CLASSES[label]}" / f"{number:05d}.png")


def prepare(out: Path, sites: int = 3, per_site: int = 600, seed: int = 0, data_dir: Path | None = None) -> list[Path]:
    rng = np.random.default_rng(seed)
    cache = data_dir or Path(os.environ.get("FEDBUS_DATA_DIR") or Path.home() / ".cache" / "fedbus" / "data")
    x, y = load(True, cache)
    test = per_site // 5
    chosen = rng.permutation(len(y))[: sites * (per_site + test)].reshape(sites, -1)
    folders = []
    for number, indices in enumerate(chosen, start=1):
        folder = out / "sites" / f"site-{number}"
        write_images(folder / "train", x[indices[:per_site]], y[indices[:per_site]])
        write_images(folder / "test", x[indices[per_site:]], y[indices[per_site:]])
        folders.append(folder)
        print(f"{folder}: {per_site} training and {test} test images")
    x, y = load(False, cache)
    keep = rng.permutation(len(y))[:HELDOUT]
    np.savez_compressed(out / "heldout.npz", x=x[keep], y=y[keep])
    return folders


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sites", type=int, default=3, help="number of sites (default 3)")
    parser.add_argument("--per-site", type=int, default=600, help="training images per site (default 600)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the draw (default 0)")
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent, help="where to write sites/")
    parser.add_argument("--data-dir", type=Path, help="torchvision's download folder, without Debian's package")
    args = parser.parse_args()
    prepare(args.out, args.sites, args.per_site, args.seed, args.data_dir)
