from __future__ import annotations

import numpy as np
import pytest

from contracts.config import check_partition
from contracts.errors import ConfigError
from fedbus.partition import partition

LABELS = np.repeat(np.arange(10), 120)  # 1200 samples, 10 balanced classes


@pytest.mark.parametrize("scheme", ["iid", "dirichlet:0.5", "shards:2"])
def test_partition_is_disjoint_complete_and_nonempty(scheme: str) -> None:
    parts = partition(LABELS, 10, scheme, seed=3)

    together = np.concatenate(parts)
    assert len(parts) == 10
    assert all(len(p) > 0 for p in parts)
    assert len(together) == len(LABELS)
    assert np.array_equal(np.sort(together), np.arange(len(LABELS)))


@pytest.mark.parametrize("scheme", ["iid", "dirichlet:0.5", "shards:2"])
def test_partition_is_reproducible_by_seed(scheme: str) -> None:
    first = partition(LABELS, 10, scheme, seed=11)
    again = partition(LABELS, 10, scheme, seed=11)
    other = partition(LABELS, 10, scheme, seed=12)

    assert all(np.array_equal(a, b) for a, b in zip(first, again, strict=True))
    assert not all(np.array_equal(a, b) for a, b in zip(first, other, strict=True))


def test_iid_gives_every_client_every_class_in_equal_amounts() -> None:
    parts = partition(LABELS, 10, "iid", seed=0)

    assert {len(p) for p in parts} == {120}
    assert all(len(np.unique(LABELS[p])) == 10 for p in parts)


def test_small_dirichlet_alpha_skews_labels_more_than_a_large_one() -> None:
    def mean_dominant_share(alpha: str) -> float:
        parts = partition(LABELS, 10, f"dirichlet:{alpha}", seed=5)
        return float(np.mean([np.bincount(LABELS[p]).max() / len(p) for p in parts]))

    assert mean_dominant_share("0.05") > 0.5
    assert mean_dominant_share("100") < 0.25


def test_shards_give_each_client_at_most_k_labels_of_equal_sized_shards() -> None:
    parts = partition(LABELS, 20, "shards:2", seed=1)

    assert all(len(np.unique(LABELS[p])) <= 2 for p in parts)
    assert {len(p) for p in parts} == {60}


def test_more_clients_than_samples_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="num_clients"):
        partition(np.arange(5), 6, "iid", seed=0)


def test_too_many_shards_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="shards"):
        partition(np.arange(10), 4, "shards:3", seed=0)


@pytest.mark.parametrize(
    "scheme",
    [
        "",
        "random",
        "iid:2",
        "dirichlet",
        "dirichlet:0",
        "dirichlet:-1",
        "dirichlet:x",
        "shards:0",
        "shards:1.5",
    ],
)
def test_bad_schemes_are_config_errors_naming_the_allowed_ones(scheme: str) -> None:
    with pytest.raises(ConfigError) as info:
        check_partition(scheme)

    assert info.value.field == "partition"
    assert "iid, dirichlet:<alpha>, shards:<k>" in info.value.message


def test_good_schemes_validate() -> None:
    for scheme in ("iid", "dirichlet:0.1", "dirichlet:1e-2", "shards:2"):
        check_partition(scheme)
