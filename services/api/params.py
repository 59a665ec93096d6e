"""Query-string and body parsing: every malformed value is a 400 naming its field."""

from __future__ import annotations

import json
import re
from typing import Any, Final

from flask import request

from services.api.errors import BadRequest

MAX_POSITION: Final = 2**62  # log positions are BIGINT
ID_PATTERN: Final = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,99}$")


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
    if len(text) > max_length:
        raise BadRequest(f"{name} must be at most {max_length} characters", field=name)
    return text


def json_object(*, required: bool) -> dict[str, Any]:
    """The request body as a JSON object; an empty body is {} unless `required`."""
    raw = request.get_data(cache=True)
    if not raw.strip():
        if required:
            raise BadRequest("a JSON object body is required", field="body")
        return {}
    try:
        body = json.loads(raw)
    except ValueError as exc:  # JSONDecodeError and UnicodeDecodeError
        raise BadRequest(f"the body is not JSON: {exc}", field="body") from exc
    if not isinstance(body, dict):
        raise BadRequest("the body must be a JSON object", field="body")
    return body


def checked_id(name: str, value: Any) -> str:
    if not isinstance(value, str) or not ID_PATTERN.match(value):
        raise BadRequest(f"{name} must match {ID_PATTERN.pattern}", field=name)
    return value


__all__ = ["ID_PATTERN", "MAX_POSITION", "checked_id", "int_arg", "json_object", "parse_int", "str_arg"]
