"""Counts of the inputs a hardening test tried, by kind and answer; printed and written as JSON."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

ARTIFACTS = Path(__file__).parent / "artifacts"


class Tally:
    """(kind, answer) -> how many inputs of that kind got that answer."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.counts: Counter[tuple[str, str]] = Counter()

    def add(self, kind: str, answer: str) -> None:
        self.counts[(kind, answer)] += 1

    def table(self) -> str:
        rows = [f"{'kind':<26} {'answer':<20} {'inputs':>6}"]
        rows += [f"{kind:<26} {answer:<20} {n:>6}" for (kind, answer), n in sorted(self.counts.items())]
        rows.append(f"{'total':<26} {'':<20} {sum(self.counts.values()):>6}")
        return "\n".join(rows)

    def write(self, filename: str = "inputs_tried.json") -> Path:
        """Merge this tally into the JSON file under its name (other test files keep theirs)."""
        ARTIFACTS.mkdir(exist_ok=True)
        path = ARTIFACTS / filename
        data = json.loads(path.read_text()) if path.exists() else {}
        data[self.name] = [{"kind": k, "answer": a, "inputs": n} for (k, a), n in sorted(self.counts.items())]
        path.write_text(json.dumps(data, indent=2) + "\n")
        return path
