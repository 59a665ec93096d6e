"""Path, query-string and body parsing: every malformed or oversized value is a 4xx naming its field.

Client text reaches the event log (PostgreSQL refuses NUL in text) and the logs, so every string from a
request is checked here: bounded in length, without control characters or lone surrogates.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from typing import Any, Final

from flask import request
from werkzeug.exceptions import RequestEntityTooLarge

from services.api.errors import BadRequest, TooLarge

MAX_POSITION: Final = 2**62  # log positions are BIGINT
ID_PATTERN: Final = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:-]{0,99}")
MAX_PATH_VALUE: Final = 200  # a run or client id in the path (ids the API makes are at most 100)
MAX_QUERY_BYTES: Final = 4096  # the whole query string
MAX_JSON_DEPTH: Final = 16  # a run config nests two levels; anything deeper is not a request of ours
UNPRINTABLE: Final = re.compile(r"[\x00-\x1f\x7f-\x9f\ud800-\udfff]")


def checked_text(name: str, text: str, *, max_length: int) -> str:
    """`text` unless it is longer than `max_length` or holds control characters or lone surrogates."""
    if len(text) > max_length:
        raise BadRequest(f"{name} must be at most {max_length} characters", field=name)
    if UNPRINTABLE.search(text):
        raise BadRequest(f"{name} must not contain control characters", field=name)
    return text


def check_path_values(values: Mapping[str, Any] | None) -> None:
    """The matched path's variables (ids, round numbers) as checked text."""
    for name, value in (values or {}).items():
        if isinstance(value, str):
            checked_text(name, value, max_length=MAX_PATH_VALUE)


def check_query_size() -> None:
    if len(request.query_string) > MAX_QUERY_BYTES:
        raise BadRequest(f"the query string must be at most {MAX_QUERY_BYTES} bytes", field="query")


def int_arg(name: str, default: int | None, low: int, high: int) -> int | None:
    """An integer query parameter in [low, high], or `default` when absent."""
    text = request.args.get(name)
    if text is None:
        return default
    return parse_int(name, text, low, high)


def parse_int(name: str, text: str, low: int, high: int) -> int:
    if not re.fullmatch(r"[+-]?[0-9]{1,19}", text.strip()):
        raise BadRequest(f"{name} must be an integer in [{low}, {high}]", field=name)
    value = int(text)
    if not low <= value <= high:
        raise BadRequest(f"{name} must be an integer in [{low}, {high}], got {value}", field=name)
    return value


def str_arg(name: str, *, max_length: int = 200) -> str | None:
    text = request.args.get(name)
    if text is None:
        return None
    return checked_text(name, text, max_length=max_length)


JSON_WHITESPACE = b" \t\n\r"  # RFC 8259 section 2


def _no_constants(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")  # json.loads would make NaN and Infinity floats


def _raw_body() -> bytes:
    try:
        return request.get_data(cache=True)
    except RequestEntityTooLarge as exc:
        limit = request.max_content_length
        raise TooLarge(f"the body must be at most {limit} bytes", field="body") from exc


def json_object(*, required: bool) -> dict[str, Any]:
    """The request body as a JSON object; an empty body is {} unless `required`."""
    raw = _raw_body()
    if not raw.strip(JSON_WHITESPACE):  # bytes.strip() would also take \x0b and \x0c, which JSON refuses
        if required:
            raise BadRequest("a JSON object body is required", field="body")
        return {}
    try:
        body = json.loads(raw, parse_constant=_no_constants)
    except ValueError as exc:  # JSONDecodeError, UnicodeDecodeError, NaN/Infinity, ints past 4300 digits
        raise BadRequest(f"the body is not JSON: {exc!s:.200}", field="body") from exc
    except RecursionError as exc:
        raise BadRequest(f"the body nests deeper than {MAX_JSON_DEPTH} levels", field="body") from exc
    if not isinstance(body, dict):
        raise BadRequest("the body must be a JSON object", field="body")
    if _depth(body) > MAX_JSON_DEPTH:
        raise BadRequest(f"the body nests deeper than {MAX_JSON_DEPTH} levels", field="body")
    return body


def _depth(value: Any) -> int:
    """How deep lists and objects nest in `value`, without recursion (so any depth is safe to measure)."""
    deepest, pending = 0, [(value, 1)]
    while pending:
        item, depth = pending.pop()
        if isinstance(item, dict | list):
            deepest = max(deepest, depth)
            children = item.values() if isinstance(item, dict) else item
            pending.extend((child, depth + 1) for child in children)
    return deepest


def checked_id(name: str, value: Any) -> str:
    if not isinstance(value, str) or not ID_PATTERN.fullmatch(value):
        raise BadRequest(f"{name} must match ^{ID_PATTERN.pattern}$", field=name)
    return value


__all__ = [
    "ID_PATTERN",
    "MAX_JSON_DEPTH",
    "MAX_PATH_VALUE",
    "MAX_POSITION",
    "MAX_QUERY_BYTES",
    "check_path_values",
    "check_query_size",
    "checked_id",
    "checked_text",
    "int_arg",
    "json_object",
    "parse_int",
    "str_arg",
]
