from __future__ import annotations

import contextlib
from typing import Any

import msgpack
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from contracts.errors import CodecError, ConfigError, DigestMismatch
from contracts.tensor_codec import (
    ALLOWED_DTYPES,
    ChunkAssembler,
    Manifest,
    TensorSpec,
    TooLarge,
    decode_tensors,
    encode_tensors,
    encode_with_manifest,
    iter_chunks,
    sha256_hex,
    specs_of,
)

names = st.text(st.characters(codec="utf-8", exclude_categories=["Cs"]), min_size=1, max_size=12)
arrays = st.sampled_from(sorted(ALLOWED_DTYPES)).flatmap(
    lambda dtype: hnp.arrays(dtype, hnp.array_shapes(min_dims=0, max_dims=3, min_side=0, max_side=4))
)
tensor_dicts = st.dictionaries(names, arrays, max_size=4)


def _sample() -> dict[str, np.ndarray[Any, Any]]:
    return {
        "conv.weight": np.arange(24, dtype=np.float32).reshape(2, 3, 4),
        "bn.num_batches_tracked": np.array(7, dtype=np.int64),
        "mask": np.array([True, False]),
    }


def _packed(records: Any, version: Any = 1) -> bytes:
    data: bytes = msgpack.packb({"v": version, "t": records}, use_bin_type=True)
    return data


@settings(max_examples=100, deadline=None)
@given(tensor_dicts)
def test_decode_inverts_encode_exactly(tensors: dict[str, np.ndarray[Any, Any]]) -> None:
    decoded = decode_tensors(encode_tensors(tensors))

    assert sorted(decoded) == sorted(tensors)
    for name, array in tensors.items():
        assert decoded[name].dtype == array.dtype
        assert decoded[name].shape == array.shape
        assert decoded[name].tobytes() == array.tobytes()  # bitwise, so NaN payloads count too
        assert decoded[name].flags.writeable


def test_encoding_is_deterministic_whatever_the_insertion_order() -> None:
    tensors = _sample()
    reordered = dict(reversed(list(tensors.items())))

    assert encode_tensors(tensors) == encode_tensors(reordered)


def test_big_endian_input_is_encoded_little_endian() -> None:
    native = {"w": np.arange(6, dtype=np.float32)}
    swapped = {"w": native["w"].astype(">f4")}

    assert encode_tensors(swapped) == encode_tensors(native)


def test_non_contiguous_input_round_trips() -> None:
    array = np.arange(12, dtype=np.int32).reshape(3, 4).T

    decoded = decode_tensors(encode_tensors({"t": array}))

    np.testing.assert_array_equal(decoded["t"], array)


def test_encode_refuses_dtypes_outside_the_allowed_set() -> None:
    with pytest.raises(CodecError, match="complex64"):
        encode_tensors({"z": np.zeros(2, dtype=np.complex64)})


@settings(max_examples=100, deadline=None)
@given(st.binary(max_size=200))
def test_random_bytes_raise_only_codec_error(data: bytes) -> None:
    with contextlib.suppress(CodecError):
        decode_tensors(data, max_elements=10_000)


@settings(max_examples=100, deadline=None)
@given(st.data())
def test_mutated_payloads_raise_only_codec_error(data: st.DataObject) -> None:
    payload = bytearray(encode_tensors(_sample()))
    for _ in range(data.draw(st.integers(1, 4))):
        position = data.draw(st.integers(0, len(payload) - 1))
        payload[position] = data.draw(st.integers(0, 255))
    cut = data.draw(st.integers(0, len(payload)))

    with contextlib.suppress(CodecError):
        decode_tensors(bytes(payload[:cut]), max_elements=10_000)


@pytest.mark.parametrize(
    ("payload", "message"),
    [
        (msgpack.packb([1, 2]), "expected a map"),
        (_packed([], version=2), "unsupported version"),
        (_packed([["w", "float32", [1]]]), "record must be"),
        (_packed([["w", "complex64", [1], b"\0" * 8]]), "not allowed"),
        (_packed([["w", "float32", [2], b"\0" * 4]]), "expected 8 bytes"),
        (_packed([["w", "float32", [-1], b""]]), "negative"),
        (_packed([["w", "float32", [1], b"\0" * 4], ["w", "float32", [1], b"\0" * 4]]), "duplicate"),
        (_packed([["w", "bool", [1], b"\x02"]]), "bool"),
        (_packed([["", "int8", [1], b"\0"]]), "non-empty"),
        (b"\xc1", "not valid msgpack"),
    ],
)
def test_malformed_payloads_are_named_in_the_error(payload: bytes, message: str) -> None:
    with pytest.raises(CodecError, match=message):
        decode_tensors(payload)


def test_too_many_elements_is_too_large() -> None:
    payload = encode_tensors({"a": np.zeros(8, np.float32), "b": np.zeros(8, np.float32)})

    with pytest.raises(TooLarge, match="b"):
        decode_tensors(payload, max_elements=10)


def test_manifest_describes_the_bytes_and_survives_its_transport_form() -> None:
    data, manifest = encode_with_manifest(_sample())

    assert manifest.size == len(data)
    assert manifest.digest == sha256_hex(data)
    assert manifest.tensors == specs_of(_sample())
    assert [spec.name for spec in manifest.tensors] == ["bn.num_batches_tracked", "conv.weight", "mask"]
    assert Manifest.from_dict(manifest.to_dict()) == manifest
    assert TensorSpec.from_dict({"name": "w", "dtype": "int8", "shape": [2, 3]}).shape == (2, 3)


@pytest.mark.parametrize(
    "broken",
    [
        {"size": -1},
        {"size": True},
        {"digest": "ABC"},
        {"tensors": [{"name": "w", "dtype": "object", "shape": [1]}]},
        {"tensors": [{"name": "w", "dtype": "int8", "shape": [1.5]}]},
        {"tensors": [{"name": "w", "dtype": "int8"}]},
        {"tensors": [{"name": "w", "dtype": "int8", "shape": []}] * 2},
        {"tensors": "w"},
    ],
)
def test_manifest_from_dict_rejects_malformed_fields(broken: dict[str, Any]) -> None:
    fields = encode_with_manifest(_sample())[1].to_dict() | broken

    with pytest.raises(CodecError):
        Manifest.from_dict(fields)


@settings(max_examples=50, deadline=None)
@given(st.binary(max_size=3000), st.integers(1, 700))
def test_chunks_reassemble_to_the_original(data: bytes, chunk_size: int) -> None:
    assembler = ChunkAssembler(len(data), sha256_hex(data), max_size=4096)

    chunks = list(iter_chunks(data, chunk_size))
    for chunk in chunks:
        assembler.add(chunk)

    assert all(0 < len(chunk) <= chunk_size for chunk in chunks)
    assert assembler.finish() == data


def test_iter_chunks_refuses_a_non_positive_size() -> None:
    with pytest.raises(ConfigError, match="chunk_size"):
        iter_chunks(b"abc", 0)


def test_assembler_refuses_bytes_past_the_hard_cap_as_too_large() -> None:
    assembler = ChunkAssembler(10, sha256_hex(b"x" * 10), max_size=10)
    assembler.add(b"x" * 6)

    with pytest.raises(TooLarge):
        assembler.add(b"x" * 5)


def test_assembler_refuses_a_declared_size_over_the_cap_up_front() -> None:
    with pytest.raises(TooLarge):
        ChunkAssembler(11, sha256_hex(b""), max_size=10)


def test_assembler_refuses_bytes_past_the_declared_size() -> None:
    assembler = ChunkAssembler(4, sha256_hex(b"abcd"), max_size=100)

    with pytest.raises(CodecError, match="declared size") as info:
        assembler.add(b"abcde")

    assert not isinstance(info.value, TooLarge)


def test_assembler_refuses_a_short_stream() -> None:
    assembler = ChunkAssembler(4, sha256_hex(b"abcd"), max_size=100)
    assembler.add(b"abc")

    with pytest.raises(CodecError, match="3 of 4"):
        assembler.finish()


def test_assembler_detects_a_digest_mismatch() -> None:
    assembler = ChunkAssembler(4, sha256_hex(b"abcd"), max_size=100)
    assembler.add(b"abce")

    with pytest.raises(DigestMismatch):
        assembler.finish()


def test_iter_chunks_from_an_offset_resumes_where_a_download_stopped() -> None:
    data = bytes(range(10))
    assert list(iter_chunks(data, 4, offset=3)) == [data[3:7], data[7:]]
    assert list(iter_chunks(data, 4, offset=10)) == []
