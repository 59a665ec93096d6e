"""Malformed (and valid) UploadUpdate streams as raw proto messages, each with the status it must get.

A `Recipe` is what hypothesis draws (a kind and its knobs); `build` turns it into the messages and the
metadata of one call against a concrete open round (`Target`).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Any

import grpc
import numpy as np
import zstandard
from hypothesis import assume
from hypothesis import strategies as st

from contracts.compression import compress_update, parse_compression
from contracts.proto.fedbus.v1 import federation_pb2 as pb
from contracts.tensors import TensorDict
from contracts.uploads import MAX_INT32, MAX_TEXT

Code = grpc.StatusCode
INT64 = st.integers(-(2**63), 2**63 - 1)

# The documented answer to each kind of input (DESIGN.md §5); OK means accepted.
EXPECTED: dict[str, grpc.StatusCode] = {
    "valid": Code.OK,
    "missing_header": Code.INVALID_ARGUMENT,
    "empty_stream": Code.INVALID_ARGUMENT,
    "header_on_later_chunk": Code.INVALID_ARGUMENT,
    "dropped_chunk": Code.INVALID_ARGUMENT,  # the stream ends short of its declared size
    "longer_than_declared": Code.INVALID_ARGUMENT,
    "reordered_chunks": Code.DATA_LOSS,
    "digest_mismatch": Code.DATA_LOSS,
    "malformed_digest": Code.INVALID_ARGUMENT,
    "declared_too_large": Code.RESOURCE_EXHAUSTED,
    "actual_too_large": Code.RESOURCE_EXHAUSTED,
    "zstd_bomb": Code.INVALID_ARGUMENT,
    "corrupt_payload": Code.INVALID_ARGUMENT,
    "not_finite": Code.INVALID_ARGUMENT,
    "norm_exceeded": Code.INVALID_ARGUMENT,
    "wrong_shape": Code.INVALID_ARGUMENT,
    "wrong_dtype": Code.INVALID_ARGUMENT,
    "missing_keys": Code.INVALID_ARGUMENT,
    "unexpected_keys": Code.INVALID_ARGUMENT,
    "bad_header_numbers": Code.INVALID_ARGUMENT,
    "stale_round": Code.FAILED_PRECONDITION,
    "old_model_version": Code.FAILED_PRECONDITION,
    "duplicate": Code.ALREADY_EXISTS,
    "wrong_client": Code.PERMISSION_DENIED,
    "no_token": Code.UNAUTHENTICATED,
    "garbage_token": Code.UNAUTHENTICATED,
    "unknown_run": Code.NOT_FOUND,
}


@dataclass(frozen=True, slots=True, kw_only=True)
class Target:
    """The open round an upload aims at, and who sends it."""

    run_id: str
    round: int
    model_version: int
    model: TensorDict
    client_id: str
    token: str
    other_client_id: str
    enrollment_token: str
    cap: int  # round.max_update_bytes


@dataclass(frozen=True, slots=True, kw_only=True)
class Recipe:
    kind: str
    codec: str
    seed: int
    chunk_size: int
    knobs: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True, kw_only=True)
class Attempt:
    """`before` streams go first (the accepted upload a duplicate repeats); `chunks` is the one judged."""

    chunks: list[pb.UpdateChunk]
    metadata: tuple[tuple[str, str], ...] | None
    before: list[list[pb.UpdateChunk]] = field(default_factory=list)


def recipes(kind: str) -> st.SearchStrategy[Recipe]:
    """Recipes of one kind, with every knob a builder may use drawn at random."""
    return st.builds(
        Recipe,
        kind=st.just(kind),
        codec=st.sampled_from(["fp32", "fp16", "int8", "topk:0.5", "topk:0.25+int8", "topk:0.5+fp16"]),
        seed=st.integers(0, 2**32 - 1),
        chunk_size=st.integers(1, 512),
        knobs=st.fixed_dictionaries(
            {
                "int": INT64,
                "small": st.integers(0, 10**6),
                "extra": st.integers(1, 3 << 16),
                "text": st.text(min_size=1, max_size=80),
                "token": st.text("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789._-", max_size=120),
                "bytes": st.binary(min_size=1, max_size=2048),
                "pick": st.integers(0, 7),
                "value": st.sampled_from([float("nan"), float("inf"), float("-inf")]),
            }
        ),
    )


def delta_of(model: TensorDict, seed: int, scale: float = 0.01) -> TensorDict:
    rng = np.random.default_rng(seed)
    return {k: (rng.standard_normal(v.shape) * scale).astype(np.float32) for k, v in model.items()}


def header(t: Target, payload: bytes, codec: str, **overrides: Any) -> pb.UpdateHeader:
    fields: dict[str, Any] = {
        "run_id": t.run_id,
        "round": t.round,
        "client_id": t.client_id,
        "base_model_version": t.model_version,
        "num_samples": 100,
        "metrics": {"loss": 0.5},
        "epsilon": 1.0,
        "codec": codec,
        "total_size": len(payload),
        "sha256": hashlib.sha256(payload).hexdigest(),
        "raw_bytes": len(payload),
    }
    fields.update(overrides)
    return pb.UpdateHeader(**fields)


def in_bounds(text: str) -> str:
    """`text` made an id a client may send (printable, not empty, not too long): refused for what it names."""
    return ("x-" + "".join(c for c in text if c.isprintable()))[:MAX_TEXT]


def chunked(head: pb.UpdateHeader | None, payload: bytes, size: int) -> list[pb.UpdateChunk]:
    pieces = [payload[i : i + size] for i in range(0, len(payload), size)] or [b""]
    return [pb.UpdateChunk(header=head if i == 0 else None, data=p) for i, p in enumerate(pieces)]


def zstd_bomb(size: int) -> bytes:
    """A frame of a few KiB that declares (and holds) `size` zero bytes."""
    compressor = zstandard.ZstdCompressor(level=3).compressobj(size=size)
    block = bytes(1 << 20)
    parts = [compressor.compress(block[: min(len(block), size - i)]) for i in range(0, size, len(block))]
    return b"".join(parts) + compressor.flush()


def build(r: Recipe, t: Target) -> Attempt:
    k, kind = r.knobs, r.kind
    delta = delta_of(t.model, r.seed)
    names = sorted(delta)
    if kind == "not_finite":
        flat = delta[names[k["pick"] % len(names)]].reshape(-1)
        flat[k["small"] % flat.size] = k["value"]
        r = Recipe(kind=kind, codec=r.codec.replace("int8", "fp16"), seed=r.seed, chunk_size=r.chunk_size, knobs=k)
    elif kind == "norm_exceeded":  # 1e7 would overflow fp16 into inf (not_finite): keep fp32 or int8 values
        delta = delta_of(t.model, r.seed, scale=1e7)
        r = Recipe(
            kind=kind,
            codec=r.codec.replace("+fp16", "").replace("fp16", "fp32"),
            seed=r.seed,
            chunk_size=r.chunk_size,
            knobs=k,
        )
    elif kind == "wrong_shape":
        name = names[k["pick"] % len(names)]
        delta[name] = np.zeros(delta[name].size + 1 + k["small"] % 5, dtype=np.float32)
    elif kind == "wrong_dtype":
        name = names[k["pick"] % len(names)]
        delta[name] = np.zeros(delta[name].shape, dtype=["int32", "int8", "bool", "uint8"][k["pick"] % 4])
    elif kind == "missing_keys":
        del delta[names[k["pick"] % len(names)]]
    elif kind == "unexpected_keys":
        assume(k["text"] not in delta)
        delta[k["text"]] = np.zeros(3, dtype=np.float32)
    payload = compress_update(delta, parse_compression(r.codec)).payload
    me = (("authorization", f"Bearer {t.token}"),)
    size = max(1, min(r.chunk_size, len(payload)))
    if kind == "corrupt_payload":
        payload = [k["bytes"], payload[: k["small"] % len(payload)] or b"x"][k["pick"] % 2]
    elif kind == "zstd_bomb":
        payload = zstd_bomb((2 + k["pick"]) << 20)
    simple = {"valid", "not_finite", "norm_exceeded", "wrong_shape", "wrong_dtype", "missing_keys"}
    if kind in simple | {"unexpected_keys", "corrupt_payload", "zstd_bomb"}:
        return Attempt(chunks=chunked(header(t, payload, r.codec), payload, size), metadata=me)
    if kind == "duplicate":
        first = chunked(header(t, payload, r.codec), payload, size)
        again = compress_update(delta_of(t.model, r.seed + 1), parse_compression(r.codec)).payload
        return Attempt(chunks=chunked(header(t, again, r.codec), again, size), metadata=me, before=[first])
    if kind == "missing_header":
        chunks = chunked(None, payload, size)
        if k["pick"] % 2 and len(chunks) > 1:  # the header arrives, but only on the second chunk
            chunks[1] = pb.UpdateChunk(header=header(t, payload, r.codec), data=chunks[1].data)
        return Attempt(chunks=chunks, metadata=me)
    if kind == "empty_stream":
        return Attempt(chunks=[], metadata=me)
    if kind in ("header_on_later_chunk", "dropped_chunk", "reordered_chunks"):
        size = max(1, min(size, len(payload) // 2))
        chunks = chunked(header(t, payload, r.codec), payload, size)
        n, i = len(chunks), 1 + k["small"] % (len(chunks) - 1)
        if kind == "header_on_later_chunk":
            chunks[i] = pb.UpdateChunk(header=header(t, payload, r.codec), data=chunks[i].data)
        elif kind == "dropped_chunk":
            del chunks[i]
        else:
            order = list(range(n))
            order[0], order[i] = order[i], order[0]
            data = [chunks[j].data for j in order]
            assume(b"".join(data) != payload)
            chunks = [pb.UpdateChunk(header=chunks[0].header if j == 0 else None, data=d) for j, d in enumerate(data)]
        return Attempt(chunks=chunks, metadata=me)
    if kind == "longer_than_declared":
        head = header(t, payload, r.codec)
        return Attempt(chunks=chunked(head, payload + bytes(k["extra"] % 1000 + 1), size), metadata=me)
    if kind == "digest_mismatch":
        if k["pick"] % 2:
            wrong = hashlib.sha256(k["bytes"] + payload).hexdigest()
            return Attempt(chunks=chunked(header(t, payload, r.codec, sha256=wrong), payload, size), metadata=me)
        position = k["small"] % len(payload)
        tampered = payload[:position] + bytes([payload[position] ^ 0x5A]) + payload[position + 1 :]
        return Attempt(chunks=chunked(header(t, payload, r.codec), tampered, size), metadata=me)
    if kind == "malformed_digest":
        real = hashlib.sha256(payload).hexdigest()
        options = [real.upper(), real[:-1], real + "0", "g" * 64, k["text"], ""]
        sha = options[k["pick"] % len(options)]
        assume(sha != real)
        return Attempt(chunks=chunked(header(t, payload, r.codec, sha256=sha), payload, size), metadata=me)
    if kind == "declared_too_large":
        declared = t.cap + 1 + abs(k["int"]) % (2**63 - 1 - t.cap)
        return Attempt(chunks=chunked(header(t, payload, r.codec, total_size=declared), payload, size), metadata=me)
    if kind == "actual_too_large":
        body = bytes(t.cap + k["extra"])
        head = header(t, payload, r.codec, total_size=t.cap)
        return Attempt(chunks=chunked(head, body, max(1024, r.chunk_size * 128)), metadata=me)
    if kind == "bad_header_numbers":
        bad = -(abs(k["int"]) % 2**63)  # zero or negative
        field_name = ["round", "num_samples", "total_size", "raw_bytes", "epsilon"][k["pick"] % 5]
        value: Any = min(bad, -1) if field_name == "raw_bytes" else bad
        if field_name == "epsilon":
            value = float("nan") if k["small"] % 2 else float(min(bad, -1))
        head = header(t, payload, r.codec, **{field_name: value})
        return Attempt(chunks=chunked(head, payload, size), metadata=me)
    if kind == "stale_round":
        other = t.round + 1 + abs(k["int"]) % (MAX_INT32 - t.round)  # past 2**31 - 1: out of bounds
        return Attempt(chunks=chunked(header(t, payload, r.codec, round=other), payload, size), metadata=me)
    if kind == "old_model_version":
        version = abs(k["int"]) % (MAX_INT32 + 1)
        assume(version != t.model_version)
        head = header(t, payload, r.codec, base_model_version=version)
        return Attempt(chunks=chunked(head, payload, size), metadata=me)
    if kind == "wrong_client":
        who = t.other_client_id if k["pick"] % 2 else in_bounds(k["text"])
        assume(who != t.client_id)
        return Attempt(chunks=chunked(header(t, payload, r.codec, client_id=who), payload, size), metadata=me)
    if kind == "unknown_run":
        run_id = in_bounds(k["text"])
        assume(run_id != t.run_id)
        return Attempt(chunks=chunked(header(t, payload, r.codec, run_id=run_id), payload, size), metadata=me)
    chunks = chunked(header(t, payload, r.codec), payload, size)
    if kind == "no_token":
        choices = [None, (("x-other", "1"),), (("authorization", f"Basic {t.token}"),), (("authorization", ""),)]
        return Attempt(chunks=chunks, metadata=choices[k["pick"] % len(choices)])
    forged = f"{t.other_client_id}.{t.token.split('.')[1]}.{t.token.rsplit('.', 1)[1]}"
    tokens = [k["token"], t.enrollment_token, forged, t.token[:-3] + "AAA", f"{t.client_id}.1.{k['token']}"]
    token = tokens[k["pick"] % len(tokens)]
    assume(token != t.token)
    return Attempt(chunks=chunks, metadata=(("authorization", f"Bearer {token}"),))
