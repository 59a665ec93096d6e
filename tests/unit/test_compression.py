from __future__ import annotations

import contextlib
import math
from typing import Any

import msgpack
import numpy as np
import pytest
import zstandard
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from contracts.compression import (
    CompressionSpec,
    ErrorFeedback,
    compress_update,
    decompress_update,
    parse_compression,
)
from contracts.errors import CodecError, ConfigError
from contracts.tensor_codec import TooLarge

FloatArray = np.ndarray[Any, np.dtype[np.float32]]

finite_floats = st.floats(-1e4, 1e4, width=32, allow_subnormal=False)
float_arrays = hnp.arrays(np.float32, hnp.array_shapes(min_dims=1, max_dims=3, max_side=6), elements=finite_floats)
fractions = st.floats(0.01, 1.0)


def _update(seed: int = 0, size: int = 1000) -> dict[str, np.ndarray[Any, Any]]:
    rng = np.random.default_rng(seed)
    return {
        "fc.weight": rng.standard_normal((size // 10, 10)).astype(np.float32),
        "fc.bias": rng.standard_normal(10).astype(np.float32),
        "bn.num_batches_tracked": np.array(12, dtype=np.int64),
    }


def _round_trip(update: dict[str, Any], text: str) -> dict[str, Any]:
    return decompress_update(compress_update(update, parse_compression(text)).payload)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("none", CompressionSpec()),
        ("fp32", CompressionSpec()),
        ("FP16", CompressionSpec(quantize="fp16")),
        ("int8", CompressionSpec(quantize="int8")),
        ("topk:0.1", CompressionSpec(topk=0.1)),
        ("topk:0.05+int8", CompressionSpec(quantize="int8", topk=0.05)),
        (" topk:1+fp16 ", CompressionSpec(quantize="fp16", topk=1.0)),
    ],
)
def test_parse_compression_accepts_the_documented_forms(text: str, expected: CompressionSpec) -> None:
    assert parse_compression(text) == expected


@pytest.mark.parametrize(
    "text",
    ["", "gzip", "topk", "topk:0", "topk:1.5", "topk:nan", "topk:abc", "topk:0.1+fp32", "int8+topk:0.1"],
)
def test_parse_compression_rejects_anything_else_listing_the_allowed_forms(text: str) -> None:
    with pytest.raises(ConfigError, match="allowed: fp32, fp16, int8") as info:
        parse_compression(text)

    assert info.value.field == "compression"


@settings(max_examples=50, deadline=None)
@given(st.sampled_from(["fp32", "fp16", "int8"]), st.none() | fractions)
def test_spec_text_parses_back_to_the_same_spec(quantize: str, topk: float | None) -> None:
    spec = CompressionSpec(quantize=quantize, topk=topk)

    assert parse_compression(str(spec)) == spec


def test_lossy_is_false_only_when_the_server_gets_exact_values() -> None:
    assert not CompressionSpec().lossy
    assert not CompressionSpec(topk=1.0).lossy
    assert CompressionSpec(quantize="fp16").lossy
    assert CompressionSpec(topk=0.5).lossy


@settings(max_examples=50, deadline=None)
@given(float_arrays)
def test_fp32_path_is_exact(array: FloatArray) -> None:
    decoded = _round_trip({"w": array}, "fp32")

    assert decoded["w"].dtype == np.float32
    np.testing.assert_array_equal(decoded["w"], array)


@settings(max_examples=50, deadline=None)
@given(float_arrays)
def test_fp16_keeps_relative_error_within_half_precision(array: FloatArray) -> None:
    decoded = _round_trip({"w": array}, "fp16")["w"]

    # Relative bound for normal fp16 numbers, absolute bound below fp16's smallest normal.
    bound = np.maximum(np.abs(array) * 2.0**-11, 2.0**-25)
    assert decoded.shape == array.shape
    assert np.all(np.abs(decoded - array) <= bound)


@settings(max_examples=50, deadline=None)
@given(float_arrays)
def test_int8_error_is_at_most_half_a_step(array: FloatArray) -> None:
    scale = float(np.max(np.abs(array))) / 127

    decoded = _round_trip({"w": array}, "int8")["w"]

    error = np.abs(decoded.astype(np.float64) - array.astype(np.float64))
    assert np.all(error <= scale / 2 * (1 + 1e-5) + 1e-30)


@settings(max_examples=50, deadline=None)
@given(float_arrays, fractions)
def test_topk_keeps_exactly_the_k_largest_magnitudes(array: FloatArray, fraction: float) -> None:
    flat = array.reshape(-1)
    k = max(1, math.ceil(fraction * flat.size))

    decoded = _round_trip({"w": array}, f"topk:{fraction!r}")["w"].reshape(-1)

    kept = decoded != 0
    assert np.count_nonzero(kept) <= k
    np.testing.assert_array_equal(decoded[kept], flat[kept])
    kept_or_zero = np.sort(np.abs(np.where(kept, flat, 0)))[-k:]
    np.testing.assert_array_equal(kept_or_zero, np.sort(np.abs(flat))[-k:])


def test_non_float_tensors_travel_unchanged() -> None:
    update = _update() | {"mask": np.array([True, False]), "steps": np.arange(3, dtype=np.uint8)}

    decoded = _round_trip(update, "topk:0.01+int8")

    for name in ("bn.num_batches_tracked", "mask", "steps"):
        assert decoded[name].dtype == update[name].dtype
        np.testing.assert_array_equal(decoded[name], update[name])


def test_float_tensors_come_back_float32_in_their_shape() -> None:
    update = {"h": np.ones((2, 3), np.float16), "d": np.ones((4,), np.float64)}

    decoded = _round_trip(update, "topk:0.5+fp16")

    assert {name: (a.dtype, a.shape) for name, a in decoded.items()} == {
        "h": (np.float32, (2, 3)),
        "d": (np.float32, (4,)),
    }


@pytest.mark.parametrize("text", ["fp16", "int8", "topk:0.1", "topk:0.1+int8"])
def test_lossy_compressions_shrink_dense_random_updates(text: str) -> None:
    compressed = compress_update(_update(size=10_000), parse_compression(text))

    assert compressed.wire_bytes == len(compressed.payload)
    assert compressed.raw_bytes == 4 * (10_000 + 10) + 8
    assert compressed.ratio == compressed.raw_bytes / compressed.wire_bytes
    assert compressed.ratio > 1.5


def test_int8_compresses_dense_random_data_about_four_times() -> None:
    compressed = compress_update(_update(size=10_000), parse_compression("int8"))

    assert compressed.ratio >= 3


def _decoded_w(payload: bytes) -> np.ndarray[Any, np.dtype[np.float64]]:
    return np.asarray(decompress_update(payload)["w"], dtype=np.float64)


def test_error_feedback_delivers_the_dropped_mass_over_rounds() -> None:
    update = {"w": np.random.default_rng(1).standard_normal(500).astype(np.float32)}
    feedback = ErrorFeedback()
    spec = parse_compression("topk:0.1")
    rounds = 60

    delivered = np.zeros(500, dtype=np.float64)
    residual_norms = []
    for _ in range(rounds):
        delivered += _decoded_w(compress_update(update, spec, feedback).payload)
        residual_norms.append(feedback.norm())

    # What the server got plus what the client still holds is exactly what was sent.
    sent = rounds * update["w"].astype(np.float64)
    residual = feedback.residual("w")
    assert residual is not None
    np.testing.assert_allclose(delivered + residual, sent, rtol=1e-4, atol=1e-3)
    # The residual stays bounded, so the relative gap shrinks like 1/R.
    assert max(residual_norms[rounds // 2 :]) <= 2 * max(residual_norms[: rounds // 2])
    assert np.linalg.norm(delivered - sent) / np.linalg.norm(sent) < 0.2


def test_without_error_feedback_topk_keeps_dropping_the_same_mass() -> None:
    update = {"w": np.random.default_rng(1).standard_normal(500).astype(np.float32)}
    spec = parse_compression("topk:0.1")

    delivered = np.zeros(500, dtype=np.float64)
    for _ in range(10):
        delivered += _decoded_w(compress_update(update, spec).payload)

    sent = 10 * update["w"]
    assert np.linalg.norm(delivered - sent) / np.linalg.norm(sent) > 0.5


def test_error_feedback_reset_forgets_residuals() -> None:
    feedback = ErrorFeedback()
    compress_update(_update(), parse_compression("topk:0.1"), feedback)

    feedback.reset()

    assert feedback.residual("fc.weight") is None
    assert feedback.norm() == 0.0


def test_int8_refuses_non_finite_values() -> None:
    with pytest.raises(ValueError, match="non-finite"):
        compress_update({"w": np.array([1.0, np.nan], np.float32)}, parse_compression("int8"))


def test_decompress_refuses_a_declared_size_over_the_cap() -> None:
    payload = compress_update(_update(), parse_compression("fp32")).payload

    with pytest.raises(TooLarge):
        decompress_update(payload, max_decompressed_bytes=1000)


def test_decompress_refuses_a_frame_without_a_declared_size() -> None:
    inner = zstandard.ZstdDecompressor().decompress(compress_update(_update(), CompressionSpec()).payload)
    streamed = zstandard.ZstdCompressor(write_content_size=False).compressobj()
    payload = streamed.compress(inner) + streamed.flush()

    with pytest.raises(CodecError, match="declare its size"):
        decompress_update(payload)


def test_decompress_refuses_sparse_records_whose_dense_form_exceeds_the_caps() -> None:
    payload = _rewrite(compress_update(_update(), parse_compression("topk:0.01")).payload, s=[1 << 30])

    with pytest.raises(TooLarge):
        decompress_update(payload)
    with pytest.raises(TooLarge):
        decompress_update(payload, max_elements=5000)


def _rewrite(payload: bytes, **changes: Any) -> bytes:
    """The payload with every float record's fields replaced by ``changes``."""
    root = msgpack.unpackb(zstandard.ZstdDecompressor().decompress(payload), raw=False)
    for record in root["t"]:
        if record["q"] != "raw":
            record.update(changes)
    return zstandard.ZstdCompressor().compress(msgpack.packb(root, use_bin_type=True))


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"q": "int4"}, "unknown quantization"),
        ({"x": 1.0}, "scale"),
        ({"it": "float32"}, "index dtype"),
        ({"i": b"\x05\0\0\0\x01\0\0\0"}, "strictly increasing"),
        ({"i": b"\xff\xff\xff\xff"}, "within"),
        ({"i": b"\0\0\0"}, "whole number"),
        ({"v": b""}, "expected"),
        ({"d": "complex64"}, "not allowed"),
        ({"s": [-3]}, "negative"),
    ],
)
def test_malformed_records_are_codec_errors(changes: dict[str, Any], message: str) -> None:
    payload = _rewrite(compress_update(_update(), parse_compression("topk:0.1")).payload, **changes)

    with pytest.raises(CodecError, match=message):
        decompress_update(payload)


@settings(max_examples=100, deadline=None)
@given(st.binary(max_size=300))
def test_random_bytes_raise_only_codec_error(data: bytes) -> None:
    with contextlib.suppress(CodecError):
        decompress_update(data, max_elements=100_000, max_decompressed_bytes=1 << 20)


@settings(max_examples=100, deadline=None)
@given(st.data(), st.sampled_from(["fp32", "fp16", "int8", "topk:0.2+int8", "topk:0.3"]), st.booleans())
def test_mutated_payloads_raise_only_codec_error(data: st.DataObject, text: str, inner: bool) -> None:
    payload = compress_update(_update(size=40), parse_compression(text)).payload
    # Mutating the inner msgpack (then re-compressing) reaches the record checks behind zstd.
    target = bytearray(zstandard.ZstdDecompressor().decompress(payload) if inner else payload)
    for _ in range(data.draw(st.integers(1, 4))):
        target[data.draw(st.integers(0, len(target) - 1))] = data.draw(st.integers(0, 255))
    mutated = bytes(target[: data.draw(st.integers(0, len(target)))])
    if inner:
        mutated = zstandard.ZstdCompressor().compress(mutated)

    with contextlib.suppress(CodecError):
        decompress_update(mutated, max_elements=100_000, max_decompressed_bytes=1 << 20)
