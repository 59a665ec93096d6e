"""Envelope <-> msgpack bytes. Validation happens here, where bytes become objects; no pickle."""

from __future__ import annotations

import dataclasses
import json
import types
import typing
from typing import Any

import msgpack

from contracts.envelope import Envelope
from contracts.errors import CodecError, UnknownEventType
from contracts.events import EVENT_TYPES, Event, type_name_of

# Fields an event type had once and no longer has: read from an older log, they are dropped.
RETIRED_FIELDS: dict[str, frozenset[str]] = {
    "ClientRegistered": frozenset({"partition_index"}),  # the coordinator handed out simulated shares
}


def event_to_dict(event: Event) -> dict[str, Any]:
    return {f.name: _plain(getattr(event, f.name)) for f in dataclasses.fields(event)}


def _plain(value: Any) -> Any:
    if isinstance(value, tuple):
        return list(value)
    return value


def event_from_dict(type_name: str, payload: dict[str, Any]) -> Event:
    try:
        cls = EVENT_TYPES[type_name][0]
    except KeyError as exc:
        raise UnknownEventType(f"unknown event type {type_name!r}") from exc
    hints = _hints(cls)
    kwargs: dict[str, Any] = {}
    for f in dataclasses.fields(cls):
        if f.name not in payload:
            if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                raise CodecError(f"{type_name}.{f.name}: missing")
            continue
        kwargs[f.name] = _check(type_name, f.name, hints[f.name], payload[f.name])
    unknown = set(payload) - {f.name for f in dataclasses.fields(cls)} - RETIRED_FIELDS.get(type_name, frozenset())
    if unknown:
        raise CodecError(f"{type_name}: unexpected fields {sorted(unknown)}")
    return cls(**kwargs)


_HINTS: dict[type, dict[str, Any]] = {}


def _hints(cls: type) -> dict[str, Any]:
    """The resolved field types of an event class, kept (resolving them was most of a small event's decode)."""
    if cls not in _HINTS:
        _HINTS[cls] = typing.get_type_hints(cls)
    return _HINTS[cls]


def _check(type_name: str, name: str, hint: Any, value: Any) -> Any:
    origin = typing.get_origin(hint)
    if origin in (types.UnionType, typing.Union):
        for option in typing.get_args(hint):
            try:
                return _check(type_name, name, option, value)
            except CodecError:
                continue
        raise CodecError(f"{type_name}.{name}: {value!r} is not {hint}")
    if hint is type(None):
        if value is None:
            return None
    elif origin is tuple:  # tuple[X, ...] of one scalar type
        if isinstance(value, list | tuple):
            item = typing.get_args(hint)[0]
            return tuple(_check(type_name, name, item, v) for v in value)
    elif origin is dict:
        if isinstance(value, dict):
            return value
    elif hint is float:
        if isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
    elif hint is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif (hint is bool or hint is str) and isinstance(value, hint):
        return value
    raise CodecError(f"{type_name}.{name}: {value!r} is not {hint}")


def encode_envelope(envelope: Envelope) -> bytes:
    return msgpack.packb(_body(envelope), use_bin_type=True)  # type: ignore[no-any-return]


def envelope_to_json(envelope: Envelope) -> bytes:
    """The envelope as UTF-8 JSON, the same fields as on the wire: a copy for people, never decoded by fedbus."""
    return json.dumps(_body(envelope), separators=(",", ":"), allow_nan=True).encode()


def _body(envelope: Envelope) -> dict[str, Any]:
    return {
        "type": envelope.type,
        "event_id": envelope.event_id,
        "occurred_at": envelope.occurred_at,
        "schema_version": envelope.schema_version,
        "traceparent": envelope.traceparent,
        "payload": event_to_dict(envelope.event),
    }


def decode_envelope(data: bytes) -> Envelope:
    try:
        body = msgpack.unpackb(data, raw=False, strict_map_key=True)
    except (ValueError, msgpack.ExtraData, msgpack.FormatError, msgpack.StackError) as exc:
        raise CodecError(f"not a msgpack event: {exc}") from exc
    if not isinstance(body, dict):
        raise CodecError("event body is not a map")
    try:
        type_name, payload = body["type"], body["payload"]
        event_id, occurred_at = body["event_id"], body["occurred_at"]
    except KeyError as exc:
        raise CodecError(f"event body lacks {exc.args[0]!r}") from exc
    if not isinstance(type_name, str) or not isinstance(payload, dict):
        raise CodecError("event type must be a string and payload a map")
    if not isinstance(event_id, str) or not isinstance(occurred_at, int | float):
        raise CodecError("event_id must be a string and occurred_at a number")
    traceparent = body.get("traceparent")
    schema_version = body.get("schema_version", 1)
    if traceparent is not None and not isinstance(traceparent, str):
        raise CodecError("traceparent must be a string")
    if not isinstance(schema_version, int):
        raise CodecError("schema_version must be an integer")
    return Envelope(
        event=event_from_dict(type_name, payload),
        event_id=event_id,
        occurred_at=float(occurred_at),
        schema_version=schema_version,
        traceparent=traceparent,
    )


__all__ = ["decode_envelope", "encode_envelope", "event_from_dict", "event_to_dict", "type_name_of"]
