"""Write the tabular example's sites from scikit-learn's bundled digits (no download).

    python examples/tabular/prepare.py [--sites 3] [--out examples/tabular]

OUT/sites/site-N/ gets train.npz and test.npz (arrays x: 64 pixels of 0-16, y: the digit), and
OUT/heldout.npz the digits no site holds, for the aggregator's central evaluation. The sites hold
different amounts of data and their own mix of digits (label skew, Dirichlet(1) per digit), as real
sites would.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from sklearn.datasets import load_digits

HELDOUT = 300
SITE_TEST = 0.2


def prepare(out: Path, sites: int = 3, seed: int = 0) -> list[Path]:
    rng = np.random.default_rng(seed)
    x, y = load_digits(return_X_y=True)
    order = rng.permutation(len(y))
    x, y = x[order].astype(np.uint8), y[order].astype(np.int64)
    out.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(out / "heldout.npz", x=x[:HELDOUT], y=y[:HELDOUT])
    x, y = x[HELDOUT:], y[HELDOUT:]
    shares: list[list[int]] = [[] for _ in range(sites)]
    for digit in range(10):  # each digit's samples split over the sites in Dirichlet(1) proportions
        samples = np.flatnonzero(y == digit)
        cuts = (np.cumsum(rng.dirichlet(np.ones(sites)))[:-1] * len(samples)).astype(int)
        for share, part in zip(shares, np.split(samples, cuts), strict=True):
            share.extend(part.tolist())
    folders = []
    for number, share in enumerate(shares, start=1):
        indices = rng.permutation(np.array(share, dtype=np.int64))
        cut = len(indices) - round(len(indices) * SITE_TEST)
        folder = out / "sites" / f"site-{number}"
        folder.mkdir(parents=True, exist_ok=True)
        np.savez_compressed(folder / "train.npz", x=x[indices[:cut]], y=y[indices[:cut]])
        np.savez_compressed(folder / "test.npz", x=x[indices[cut:]], y=y[indices[cut:]])
        folders.append(folder)
        counts = np.bincount(y[indices], minlength=10).tolist()
        print(f"{folder}: {cut} training and {len(indices) - cut} test samples; of each digit {counts}")
    return folders


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sites", type=int, default=3, help="number of sites (default 3)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the split (default 0)")
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent, help="where to write sites/")
    args = parser.parse_args()
    prepare(args.out, args.sites, args.seed)
