"""What a benchmark ran on, and timing with min/median/max."""

from __future__ import annotations

import datetime
import os
import platform
import statistics
import time
from collections.abc import Callable


def machine() -> str:
    cpu = platform.processor() or "unknown CPU"
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), cpu)
    except OSError:
        pass
    import torch

    return (
        f"{platform.system()} {platform.release()}, {cpu}, {os.cpu_count()} cores, Python {platform.python_version()}, "
        f"torch {torch.__version__}, {datetime.datetime.now(datetime.UTC):%Y-%m-%d %H:%M} UTC"
    )


def timed(call: Callable[[], object], repeats: int) -> tuple[float, float, float]:
    """(min, median, max) seconds over `repeats` calls."""
    seconds = []
    for _ in range(repeats):
        started = time.perf_counter()
        call()
        seconds.append(time.perf_counter() - started)
    return min(seconds), statistics.median(seconds), max(seconds)


def fmt(triple: tuple[float, float, float], unit: float = 1e3, suffix: str = "ms") -> str:
    return " / ".join(f"{t * unit:.1f}" for t in triple) + f" {suffix}"


def min_median_max(values: list[float], spec: str) -> str:
    """`min / median / max` of `values`, each formatted with `spec` (e.g. ".2f", ",.0f")."""
    return " / ".join(format(v, spec) for v in (min(values), statistics.median(values), max(values)))
