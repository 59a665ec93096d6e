"""Range checks shared by the config sections: each error names the field and the allowed range."""

from __future__ import annotations

import math
from typing import Final

from contracts.errors import ConfigError

BUDGET_TOLERANCE: Final = 1e-6  # relative: what an accountant's rounding may add to a budget exactly spent


def check_range(name: str, value: float, low: float, high: float, *, low_open: bool = False) -> None:
    """ConfigError(name, ...) unless ``value`` is a number (no bool, no NaN) in [low, high] or (low, high]."""
    # Only floats can be NaN; math.isnan(int) converts to float and overflows past 1e308.
    nan = isinstance(value, float) and math.isnan(value)
    if isinstance(value, bool) or not isinstance(value, int | float) or nan:
        raise ConfigError(name, f"must be a number in {'(' if low_open else '['}{low}, {high}], got {value!r:.100}")
    below = value <= low if low_open else value < low
    if below or value > high:
        raise ConfigError(name, f"must be in {'(' if low_open else '['}{low}, {high}], got {value!r:.100}")


def check_int(name: str, value: int, low: int, high: int) -> None:
    """ConfigError(name, ...) unless ``value`` is an int (no bool) in [low, high]."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(name, f"must be an integer in [{low}, {high}], got {value!r:.100}")
    check_range(name, value, low, high)


def check_flag(name: str, value: bool) -> None:
    """ConfigError(name, ...) unless ``value`` is true or false."""
    if not isinstance(value, bool):
        raise ConfigError(name, f"must be true or false, got {value!r:.100}")
