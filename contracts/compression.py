"""Update compression: top-k sparsification with client-side error feedback, fp16/int8 quantization, zstd.

The payload is self-describing (msgpack inside one zstd frame), so the server needs no side channel to
decode it. Decoding is where untrusted bytes become arrays: every malformation is a CodecError.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import msgpack
import numpy as np
import zstandard

from contracts.errors import CodecError, ConfigError
from contracts.tensor_codec import (
    TooLarge,
    array_from_bytes,
    check_dtype,
    check_name,
    check_shape,
    little_endian_bytes,
    unpack_map,
)
from contracts.tensors import Array, TensorDict, TensorMapping

__all__ = [
    "CompressedUpdate",
    "CompressionSpec",
    "ErrorFeedback",
    "compress_update",
    "decompress_update",
    "parse_compression",
]

PAYLOAD_VERSION = 1
_FLOAT_DTYPES = frozenset({"float16", "float32", "float64"})
_VALUE_DTYPES: dict[str, np.dtype[Any]] = {
    "fp32": np.dtype("<f4"),
    "fp16": np.dtype("<f2"),
    "int8": np.dtype("i1"),
}
_INDEX_DTYPES: dict[str, np.dtype[Any]] = {"uint32": np.dtype("<u4"), "int64": np.dtype("<i8")}
# Larger scales would overflow float32 when dequantizing; compress_update never writes one.
_MAX_SCALE = float(np.float32(float(np.finfo(np.float32).max) / 127))
_RECORD_KEYS = {"n", "d", "s", "q", "x", "it", "i", "v"}


_QUANTIZE = ("fp32", "fp16", "int8")
_ALLOWED_TEXT = "allowed: fp32, fp16, int8, topk:<f>[+int8|+fp16]"


@dataclass(frozen=True, slots=True, kw_only=True)
class CompressionSpec:
    """How an update is compressed: value precision, optional top-k fraction, zstd level."""

    quantize: str = "fp32"
    topk: float | None = None
    zstd_level: int = 3

    def __post_init__(self) -> None:
        if self.quantize not in _QUANTIZE:
            raise ConfigError("compression", f"quantize {self.quantize!r} unknown; {_ALLOWED_TEXT}")
        if self.topk is not None and not (math.isfinite(self.topk) and 0 < self.topk <= 1):
            raise ConfigError("compression", f"topk fraction must be in (0, 1], got {self.topk!r}")
        if not 1 <= self.zstd_level <= 22:
            raise ConfigError("compression", f"zstd_level must be in [1, 22], got {self.zstd_level}")

    @property
    def lossy(self) -> bool:
        """True when the server may decode something other than what the client had."""
        return self.quantize != "fp32" or (self.topk is not None and self.topk < 1)

    def __str__(self) -> str:
        if self.topk is None:
            return self.quantize
        suffix = "" if self.quantize == "fp32" else f"+{self.quantize}"
        return f"topk:{self.topk!r}{suffix}"


def parse_compression(text: str) -> CompressionSpec:
    """Parse ``none``/``fp32``, ``fp16``, ``int8``, ``topk:<f>`` or ``topk:<f>+int8|+fp16``."""
    value = text.strip().lower()
    if value in ("none", "fp32", "fp16", "int8"):
        return CompressionSpec(quantize="fp32" if value == "none" else value)
    head, _, quantize = value.partition("+")
    if head.startswith("topk:") and quantize in ("", "int8", "fp16"):
        try:
            fraction = float(head.removeprefix("topk:"))
        except ValueError:
            fraction = math.nan
        if math.isfinite(fraction) and 0 < fraction <= 1:
            return CompressionSpec(quantize=quantize or "fp32", topk=fraction)
    raise ConfigError("compression", f"{text!r} is not a compression; {_ALLOWED_TEXT}")


@dataclass(frozen=True, slots=True, kw_only=True)
class CompressedUpdate:
    """A compressed update and its sizes: ``raw_bytes`` is the dense fp32 size, ``ratio`` raw/wire."""

    payload: bytes
    raw_bytes: int
    wire_bytes: int
    ratio: float


class ErrorFeedback:
    """The client's memory of what compression dropped, added back into the next update."""

    def __init__(self) -> None:
        self._residuals: dict[str, np.ndarray[Any, np.dtype[np.float32]]] = {}

    def compensate(self, name: str, values: Array) -> np.ndarray[Any, np.dtype[np.float32]]:
        """``values`` as float32 plus the residual kept for ``name``."""
        out = np.asarray(values, dtype=np.float32).copy()
        residual = self._residuals.get(name)
        if residual is not None:
            if residual.shape != out.shape:
                raise ValueError(f"{name}: residual shape {residual.shape} != update shape {out.shape}")
            out += residual
        return out

    def store(self, name: str, residual: Array) -> None:
        """Keep ``residual`` (what the server will not see) for the next round."""
        self._residuals[name] = np.asarray(residual, dtype=np.float32)

    def residual(self, name: str) -> np.ndarray[Any, np.dtype[np.float32]] | None:
        return self._residuals.get(name)

    def norm(self) -> float:
        """Global L2 norm of all residuals."""
        return math.sqrt(sum(float(np.sum(np.square(r, dtype=np.float64))) for r in self._residuals.values()))

    def reset(self) -> None:
        self._residuals.clear()


def compress_update(
    update: TensorMapping, spec: CompressionSpec, feedback: ErrorFeedback | None = None
) -> CompressedUpdate:
    """Compress float tensors per ``spec`` (others go as-is), then zstd; residuals go to ``feedback``."""
    records: list[dict[str, Any]] = []
    raw_bytes = 0
    for name in sorted(update):
        array = np.asarray(update[name])
        dtype = check_dtype(name, array.dtype.name)
        if dtype not in _FLOAT_DTYPES:
            raw_bytes += array.nbytes
            records.append({"n": name, "d": dtype, "s": list(array.shape), "q": "raw", "v": little_endian_bytes(array)})
            continue
        raw_bytes += 4 * array.size
        values = array.astype(np.float32) if feedback is None else feedback.compensate(name, array)
        record, decoded = _compress_tensor(name, values.reshape(-1), spec)
        record.update(n=name, d=dtype, s=list(array.shape))
        records.append(record)
        if feedback is not None:
            feedback.store(name, values - decoded.reshape(values.shape))
    inner = msgpack.packb({"v": PAYLOAD_VERSION, "spec": str(spec), "t": records}, use_bin_type=True)
    payload = zstandard.ZstdCompressor(level=spec.zstd_level, write_checksum=True).compress(inner)
    return CompressedUpdate(
        payload=payload, raw_bytes=raw_bytes, wire_bytes=len(payload), ratio=raw_bytes / len(payload)
    )


def _compress_tensor(name: str, flat: Array, spec: CompressionSpec) -> tuple[dict[str, Any], Array]:
    """One float tensor's record and the dense float32 values the server will decode from it."""
    n = flat.size
    k = n if spec.topk is None else max(1, math.ceil(spec.topk * n))
    indices: Array | None = None
    values = flat
    if k < n:
        indices = np.sort(np.argpartition(np.abs(flat), n - k)[n - k :])
        values = flat[indices]
    scale: float | None = None
    if spec.quantize == "int8":
        if not np.isfinite(values).all():
            raise ValueError(f"{name}: int8 cannot carry non-finite values")
        scale = float(np.float32(np.max(np.abs(values), initial=0.0) / 127.0))
        quantized = np.rint(values.astype(np.float64) / scale) if scale > 0 else np.zeros(values.size)
        wire_values: Array = np.clip(quantized, -127, 127).astype(np.int8)
    else:
        wire_values = values.astype(_VALUE_DTYPES[spec.quantize])
    index_dtype = "uint32" if n < 1 << 32 else "int64"
    record = {
        "q": spec.quantize,
        "x": scale,
        "it": index_dtype,
        "i": None if indices is None else indices.astype(_INDEX_DTYPES[index_dtype]).tobytes(),
        "v": little_endian_bytes(wire_values),
    }
    return record, _densify(n, indices, _dequantize(wire_values, scale))


def _dequantize(wire_values: Array, scale: float | None) -> Array:
    decoded = wire_values.astype(np.float32)
    if scale is not None:
        decoded *= np.float32(scale)
    return decoded


def _densify(n: int, indices: Array | None, values: Array) -> Array:
    if indices is None:
        return values
    dense = np.zeros(n, dtype=np.float32)
    dense[indices] = values
    return dense


def decompress_update(
    payload: bytes, *, max_elements: int | None = None, max_decompressed_bytes: int = 512 << 20
) -> TensorDict:
    """Dense tensors from :func:`compress_update` bytes (floats as float32); CodecError when malformed.

    ``max_decompressed_bytes`` caps both the zstd output and the size of the dense result.
    """
    inner = _unzstd(payload, max_decompressed_bytes)
    root = unpack_map(inner, {"v", "spec", "t"}, "compressed update")
    if root["v"] != PAYLOAD_VERSION or not isinstance(root["t"], list) or not isinstance(root["spec"], str):
        raise CodecError("compressed update: unsupported version or malformed header")
    try:
        parse_compression(root["spec"])
    except ConfigError as exc:
        raise CodecError(f"compressed update: {exc}") from exc
    out: TensorDict = {}
    elements = dense_bytes = 0
    for record in root["t"]:
        name, dtype, shape = _record_header(record)
        if name in out:
            raise CodecError(f"{name}: duplicate tensor name")
        n = math.prod(shape)
        elements += n
        dense_bytes += n * (4 if dtype in _FLOAT_DTYPES else np.dtype(dtype).itemsize)
        if max_elements is not None and elements > max_elements:
            raise TooLarge(f"{name}: update holds more than {max_elements} elements")
        if dense_bytes > max_decompressed_bytes:
            raise TooLarge(f"{name}: dense update exceeds {max_decompressed_bytes} bytes")
        out[name] = _decode_record(name, dtype, shape, record)
    return out


def _unzstd(payload: bytes, limit: int) -> bytes:
    try:
        declared = zstandard.get_frame_parameters(payload).content_size
        # The frame header's content size drives allocation, so it must be known and within the cap.
        if declared == zstandard.CONTENTSIZE_UNKNOWN or declared == zstandard.CONTENTSIZE_ERROR:
            raise CodecError("compressed update: zstd frame does not declare its size")
        if declared > limit:
            raise TooLarge(f"compressed update: decompresses to {declared} bytes, limit {limit}")
        return zstandard.ZstdDecompressor().decompress(payload, max_output_size=limit, allow_extra_data=False)
    except (zstandard.ZstdError, ValueError, TypeError) as exc:
        if isinstance(exc, CodecError):
            raise
        raise CodecError(f"compressed update: bad zstd frame ({exc})") from exc


def _record_header(record: Any) -> tuple[str, str, tuple[int, ...]]:
    if not isinstance(record, dict) or not {"n", "d", "s", "q", "v"} <= set(record) <= _RECORD_KEYS:
        raise CodecError("compressed update: malformed tensor record")
    name = check_name(record["n"])
    return name, check_dtype(name, record["d"]), check_shape(name, record["s"])


def _decode_record(name: str, dtype: str, shape: tuple[int, ...], record: dict[str, Any]) -> Array:
    quantize = record["q"]
    if dtype not in _FLOAT_DTYPES:
        if quantize != "raw" or set(record) != {"n", "d", "s", "q", "v"}:
            raise CodecError(f"{name}: a {dtype} tensor must be sent raw")
        return array_from_bytes(name, record["v"], dtype, shape)
    if not isinstance(quantize, str) or quantize not in _VALUE_DTYPES or set(record) != _RECORD_KEYS:
        raise CodecError(f"{name}: unknown quantization {quantize!r:.40} or missing fields")
    n = math.prod(shape)
    indices = _decode_indices(name, record["it"], record["i"], n)
    count = n if indices is None else indices.size
    wire_values = array_from_bytes(name, record["v"], _VALUE_DTYPES[quantize].name, (count,))
    scale = record["x"]
    if (quantize == "int8") != (isinstance(scale, float) and 0 <= scale <= _MAX_SCALE):
        raise CodecError(f"{name}: int8 needs a scale in [0, {_MAX_SCALE:.3g}], others none (got {scale!r:.40})")
    return _densify(n, indices, _dequantize(wire_values, scale)).reshape(shape)


def _decode_indices(name: str, index_dtype: Any, raw: Any, n: int) -> Array | None:
    if not isinstance(index_dtype, str) or index_dtype not in _INDEX_DTYPES:
        raise CodecError(f"{name}: unknown index dtype {index_dtype!r:.40}")
    if raw is None:
        return None
    wire = _INDEX_DTYPES[index_dtype]
    if not isinstance(raw, bytes) or len(raw) % wire.itemsize or len(raw) // wire.itemsize > n:
        raise CodecError(f"{name}: index data is not a whole number of at most {n} indices")
    indices: Array = np.frombuffer(raw, dtype=wire).astype(np.int64)
    if indices.size and (indices[0] < 0 or indices[-1] >= n or np.any(np.diff(indices) <= 0)):
        raise CodecError(f"{name}: indices must be strictly increasing and within [0, {n})")
    return indices
