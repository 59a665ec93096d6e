from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from contracts.errors import CodecError, ConfigError
from workers.learning.checkpoint import load_checkpoint, save_checkpoint

arrays = hnp.arrays(
    dtype=st.sampled_from([np.float32, np.float16, np.int8]),
    shape=hnp.array_shapes(min_dims=0, max_dims=3, max_side=4),
)
# Includes names such as "file" and "allow_pickle" that np.savez's keyword arguments would swallow.
names = st.from_regex(r"[a-z][a-z0-9_.]{0,12}", fullmatch=True) | st.sampled_from(["file", "allow_pickle"])
weights = st.dictionaries(names, arrays, max_size=4)
metas = st.dictionaries(st.text(max_size=8), st.integers() | st.text(max_size=8) | st.booleans(), max_size=4)


@settings(max_examples=40, deadline=None)
@given(weights=weights, meta=metas)
def test_checkpoint_round_trips_weights_and_meta(weights: dict[str, np.ndarray], meta: dict) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "model.npz"

        save_checkpoint(path, weights, meta)
        loaded, loaded_meta = load_checkpoint(path)

    assert loaded_meta == meta
    assert loaded.keys() == weights.keys()
    for key, value in weights.items():
        assert loaded[key].dtype == value.dtype
        np.testing.assert_array_equal(loaded[key], value)


def test_object_arrays_are_refused_rather_than_pickled(tmp_path: Path) -> None:
    with pytest.raises(ConfigError):
        save_checkpoint(tmp_path / "x.npz", {"w": np.array([object()])}, {})


def test_loading_a_file_that_is_not_a_checkpoint_is_a_codec_error(tmp_path: Path) -> None:
    path = tmp_path / "junk.npz"
    path.write_bytes(b"not a zip")

    with pytest.raises(CodecError):
        load_checkpoint(path)


def test_npz_without_metadata_is_a_codec_error(tmp_path: Path) -> None:
    path = tmp_path / "plain.npz"
    np.savez(path, w=np.zeros(3, dtype=np.float32))

    with pytest.raises(CodecError, match="__meta__"):
        load_checkpoint(path)
