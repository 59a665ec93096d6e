"""Split a dataset's indices among clients: IID, Dirichlet label skew, or label-sorted shards.

Each scheme is seeded: the same labels, client count, scheme and seed give the same split on any machine.
Clients' index arrays are disjoint, together cover every index, are sorted, and are never empty.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from contracts.config import check_partition
from contracts.errors import ConfigError

IndexArray = npt.NDArray[np.int64]
# Dirichlet draws can leave a client empty when alpha is small; redraw a bounded number of times.
_DIRICHLET_ATTEMPTS = 100


def _parse(scheme: str) -> tuple[str, float]:
    check_partition(scheme)  # the one parser of the spelling and the ranges: ConfigError("partition")
    kind, _, arg = scheme.partition(":")
    return kind, float(arg) if arg else 0.0


def partition(labels: npt.ArrayLike, num_clients: int, scheme: str, *, seed: int) -> list[IndexArray]:
    """Split indices 0..len(labels)-1 into `num_clients` disjoint, non-empty, sorted index arrays."""
    kind, arg = _parse(scheme)
    y = np.asarray(labels).reshape(-1)
    if not 1 <= num_clients <= len(y):
        raise ConfigError("num_clients", f"{num_clients} clients for {len(y)} samples; need 1..{len(y)}")
    rng = np.random.default_rng(seed)
    attempts = _DIRICHLET_ATTEMPTS if kind == "dirichlet" else 1
    for _ in range(attempts):
        parts = _split(kind, arg, y, num_clients, rng)
        if all(len(p) for p in parts):
            return [np.sort(p).astype(np.int64) for p in parts]
    raise ConfigError(
        "partition", f"{scheme!r} leaves a client without samples ({num_clients} clients, {len(y)} samples)"
    )


def _split(
    kind: str, arg: float, y: npt.NDArray[np.generic], num_clients: int, rng: np.random.Generator
) -> list[IndexArray]:
    if kind == "iid":
        return _iid(len(y), num_clients, rng)
    if kind == "dirichlet":
        return _dirichlet(y, num_clients, arg, rng)
    return _shards(y, num_clients, int(arg), rng)


def _iid(n: int, num_clients: int, rng: np.random.Generator) -> list[IndexArray]:
    return list(np.array_split(rng.permutation(n).astype(np.int64), num_clients))


def _dirichlet(
    y: npt.NDArray[np.generic], num_clients: int, alpha: float, rng: np.random.Generator
) -> list[IndexArray]:
    # Per class, client shares ~ Dirichlet(alpha): small alpha puts most of a class on few clients.
    parts: list[list[IndexArray]] = [[] for _ in range(num_clients)]
    for cls in np.unique(y):
        members = rng.permutation(np.flatnonzero(y == cls)).astype(np.int64)
        shares = rng.dirichlet(np.full(num_clients, alpha))
        cuts = (np.cumsum(shares)[:-1] * len(members)).astype(np.int64)
        for client, chunk in enumerate(np.split(members, cuts)):
            parts[client].append(chunk)
    return [np.concatenate(p) for p in parts]


def _shards(y: npt.NDArray[np.generic], num_clients: int, k: int, rng: np.random.Generator) -> list[IndexArray]:
    # McMahan et al. 2017: sort by label, cut into num_clients * k shards, deal k random shards to each.
    num_shards = num_clients * k
    if num_shards > len(y):
        raise ConfigError("partition", f"shards:{k} needs {num_shards} shards but there are {len(y)} samples")
    shuffled = rng.permutation(len(y))
    by_label = shuffled[np.argsort(y[shuffled], kind="stable")].astype(np.int64)
    shards = np.array_split(by_label, num_shards)
    order = rng.permutation(num_shards)
    return [np.concatenate([shards[s] for s in order[c * k : (c + 1) * k]]) for c in range(num_clients)]
