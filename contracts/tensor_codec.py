"""State dict <-> bytes: a deterministic msgpack layout, a manifest with sha256, and chunking for streams.

Decoding is where untrusted bytes become arrays, so every malformation is a CodecError and nothing else.
"""

from __future__ import annotations

import hashlib
import math
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import msgpack
import numpy as np

from contracts.errors import CodecError, ConfigError, DigestMismatch
from contracts.tensors import Array, TensorDict, TensorMapping

ALLOWED_DTYPES = frozenset({"float32", "float16", "float64", "int8", "int16", "int32", "int64", "uint8", "bool"})
FORMAT_VERSION = 1
MAX_NDIM = 32
_DIGEST_RE = re.compile(r"[0-9a-f]{64}")
# Errors the msgpack C and fallback unpackers raise on malformed input.
_UNPACK_ERRORS = (ValueError, TypeError, OverflowError, msgpack.UnpackException)


class TooLarge(CodecError):
    """The bytes, or the tensors they describe, exceed the allowed size."""


@dataclass(frozen=True, slots=True, kw_only=True)
class TensorSpec:
    """Name, dtype (numpy ``dtype.name``) and shape of one tensor."""

    name: str
    dtype: str
    shape: tuple[int, ...]

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "dtype": self.dtype, "shape": list(self.shape)}

    @classmethod
    def from_dict(cls, data: Any) -> TensorSpec:
        """Build a spec from its transport form; CodecError when anything is off."""
        if not isinstance(data, Mapping) or set(data) != {"name", "dtype", "shape"}:
            raise CodecError(f"tensor spec must be a map with name, dtype, shape; got {data!r:.200}")
        name, dtype, shape = data["name"], data["dtype"], data["shape"]
        return cls(name=check_name(name), dtype=check_dtype(name, dtype), shape=check_shape(name, shape))


@dataclass(frozen=True, slots=True, kw_only=True)
class Manifest:
    """What a blob of encoded tensors holds, how long it is and its sha256."""

    tensors: tuple[TensorSpec, ...]
    size: int
    digest: str

    def to_dict(self) -> dict[str, Any]:
        return {"tensors": [t.to_dict() for t in self.tensors], "size": self.size, "digest": self.digest}

    @classmethod
    def from_dict(cls, data: Any) -> Manifest:
        """Build a manifest from its transport form; CodecError when anything is off."""
        if not isinstance(data, Mapping) or set(data) != {"tensors", "size", "digest"}:
            raise CodecError("manifest must be a map with tensors, size, digest")
        tensors, size, digest = data["tensors"], data["size"], data["digest"]
        if not isinstance(tensors, list | tuple):
            raise CodecError("manifest.tensors must be a list")
        specs = tuple(TensorSpec.from_dict(t) for t in tensors)
        if len({s.name for s in specs}) != len(specs):
            raise CodecError("manifest.tensors has duplicate names")
        if not _is_int(size) or size < 0:
            raise CodecError(f"manifest.size must be a non-negative int, got {size!r}")
        return cls(tensors=specs, size=size, digest=check_digest(digest))


def sha256_hex(data: bytes) -> str:
    """Hex sha256 of ``data``."""
    return hashlib.sha256(data).hexdigest()


def specs_of(tensors: TensorMapping) -> tuple[TensorSpec, ...]:
    """Specs of ``tensors``, sorted by name."""
    return tuple(
        TensorSpec(name=name, dtype=tensors[name].dtype.name, shape=tuple(tensors[name].shape))
        for name in sorted(tensors)
    )


def encode_tensors(tensors: TensorMapping) -> bytes:
    """Deterministic bytes for ``tensors``: sorted names, little-endian C-contiguous raw data."""
    records = []
    for name in sorted(tensors):
        array = np.asarray(tensors[name])
        check_dtype(name, array.dtype.name)
        records.append([name, array.dtype.name, list(array.shape), little_endian_bytes(array)])
    packed: bytes = msgpack.packb({"v": FORMAT_VERSION, "t": records}, use_bin_type=True)
    return packed


def decode_tensors(data: bytes, *, max_elements: int | None = None) -> TensorDict:
    """Inverse of :func:`encode_tensors`; writable arrays; CodecError (TooLarge) on anything malformed."""
    root = unpack_map(data, {"v", "t"}, "tensor payload")
    if root["v"] != FORMAT_VERSION or not isinstance(root["t"], list):
        raise CodecError(f"tensor payload: unsupported version {root['v']!r} or records not a list")
    out: TensorDict = {}
    total = 0
    for record in root["t"]:
        if not isinstance(record, list) or len(record) != 4:
            raise CodecError("tensor record must be [name, dtype, shape, data]")
        name = check_name(record[0])
        if name in out:
            raise CodecError(f"{name}: duplicate tensor name")
        dtype, shape = check_dtype(name, record[1]), check_shape(name, record[2])
        total += math.prod(shape)
        if max_elements is not None and total > max_elements:
            raise TooLarge(f"{name}: tensors hold more than {max_elements} elements")
        out[name] = array_from_bytes(name, record[3], dtype, shape)
    return out


def encode_with_manifest(tensors: TensorMapping) -> tuple[bytes, Manifest]:
    """Encode ``tensors`` and describe the result."""
    data = encode_tensors(tensors)
    return data, Manifest(tensors=specs_of(tensors), size=len(data), digest=sha256_hex(data))


def iter_chunks(data: bytes, chunk_size: int = 1 << 20, *, offset: int = 0) -> Iterator[bytes]:
    """Slices of ``data`` from ``offset`` on, of at most ``chunk_size`` bytes, in order (none when nothing is
    left). Only each slice is copied, never the rest of ``data``: a shared model serves every download."""
    if chunk_size <= 0:
        raise ConfigError("chunk_size", f"must be > 0, got {chunk_size}")
    return (data[start : start + chunk_size] for start in range(offset, len(data), chunk_size))


class ChunkAssembler:
    """Reassembles a chunked stream, enforcing the declared size, a hard cap and the sha256."""

    def __init__(self, expected_size: int, expected_digest: str, max_size: int) -> None:
        if expected_size < 0:
            raise CodecError(f"declared size {expected_size} is negative")
        if expected_size > max_size:
            raise TooLarge(f"declared size {expected_size} exceeds the limit of {max_size} bytes")
        self._expected_size = expected_size
        self._expected_digest = check_digest(expected_digest)
        self._max_size = max_size
        self._buffer = bytearray()
        self._hash = hashlib.sha256()

    @property
    def received(self) -> int:
        return len(self._buffer)

    def add(self, chunk: bytes) -> None:
        """Append one chunk; TooLarge past ``max_size``, CodecError past the declared size."""
        total = len(self._buffer) + len(chunk)
        if total > self._max_size:
            raise TooLarge(f"stream exceeds the limit of {self._max_size} bytes")
        if total > self._expected_size:
            raise CodecError(f"stream exceeds its declared size of {self._expected_size} bytes")
        self._buffer += chunk
        self._hash.update(chunk)

    def finish(self) -> bytes:
        """The whole payload; CodecError when short, DigestMismatch when the sha256 differs."""
        if len(self._buffer) != self._expected_size:
            raise CodecError(f"stream ended at {len(self._buffer)} of {self._expected_size} bytes")
        actual = self._hash.hexdigest()
        if actual != self._expected_digest:
            raise DigestMismatch(f"sha256 {actual} != declared {self._expected_digest}")
        return bytes(self._buffer)


def unpack_map(data: bytes, keys: set[str], what: str) -> dict[str, Any]:
    """msgpack-decode ``data`` into a map with exactly ``keys``; CodecError otherwise."""
    try:
        root = msgpack.unpackb(data, raw=False, strict_map_key=True, use_list=True)
    except _UNPACK_ERRORS as exc:
        raise CodecError(f"{what}: not valid msgpack ({type(exc).__name__}: {exc})") from exc
    if not isinstance(root, dict) or set(root) != keys:
        raise CodecError(f"{what}: expected a map with keys {sorted(keys)}")
    return root


def little_endian_bytes(array: Array) -> bytes:
    """Raw little-endian C-order bytes of ``array``."""
    return np.ascontiguousarray(array, dtype=array.dtype.newbyteorder("<")).tobytes()


def array_from_bytes(name: str, raw: Any, dtype: str, shape: tuple[int, ...]) -> Array:
    """A writable native-endian array from raw little-endian bytes, checking the length."""
    wire = np.dtype(dtype).newbyteorder("<")
    if not isinstance(raw, bytes) or len(raw) != math.prod(shape) * wire.itemsize:
        got = len(raw) if isinstance(raw, bytes) else type(raw).__name__
        raise CodecError(f"{name}: data is {got}, expected {math.prod(shape) * wire.itemsize} bytes")
    if dtype == "bool" and raw.translate(None, b"\x00\x01"):
        raise CodecError(f"{name}: bool data holds bytes other than 0 and 1")
    return np.frombuffer(raw, dtype=wire).astype(np.dtype(dtype)).reshape(shape)


def check_name(name: Any) -> str:
    if not isinstance(name, str) or not name:
        raise CodecError(f"tensor name must be a non-empty string, got {name!r:.100}")
    return name


def check_dtype(name: str, dtype: Any) -> str:
    if not isinstance(dtype, str) or dtype not in ALLOWED_DTYPES:
        raise CodecError(f"{name}: dtype {dtype!r:.50} not allowed; allowed: {sorted(ALLOWED_DTYPES)}")
    return dtype


def check_shape(name: str, shape: Any) -> tuple[int, ...]:
    if not isinstance(shape, list | tuple) or len(shape) > MAX_NDIM:
        raise CodecError(f"{name}: shape must be a list of at most {MAX_NDIM} ints")
    if not all(_is_int(d) and 0 <= d < 1 << 62 for d in shape):
        raise CodecError(f"{name}: shape {shape!r:.100} has a negative, huge or non-int dimension")
    if math.prod(shape) >= 1 << 62:
        raise TooLarge(f"{name}: shape {shape!r:.100} has too many elements")
    return tuple(shape)


def check_digest(digest: Any) -> str:
    if not isinstance(digest, str) or not _DIGEST_RE.fullmatch(digest):
        raise CodecError(f"digest must be 64 lowercase hex characters, got {digest!r:.80}")
    return digest


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)
