"""The benchmarks' progress lines on stderr (``[bench] ...``): a long section shows that it moves and where it is."""

from __future__ import annotations

import sys


def say(text: str) -> None:
    print(f"[bench] {text}", file=sys.stderr, flush=True)
