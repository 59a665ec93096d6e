"""What a finished run leaves in --out: per-round metrics, a plot, the summary and the final model."""

from __future__ import annotations

import csv
import json
from dataclasses import asdict
from pathlib import Path
from typing import Any

from contracts.config import RunConfig
from contracts.envelope import RecordedEvent
from contracts.events import RunCompleted
from contracts.run_state import RoundSummary, fold_run


def round_rows(events: list[RecordedEvent]) -> list[RoundSummary]:
    """One row per aggregated round, from the run's events alone (the run-state fold every reader shares)."""
    return fold_run(events).summaries if events else []


def completion(events: list[RecordedEvent]) -> RunCompleted | None:
    for recorded in reversed(events):
        if isinstance(recorded.envelope.event, RunCompleted):
            return recorded.envelope.event
    return None


def write_metrics(out: Path, rows: list[RoundSummary]) -> None:
    (out / "metrics.json").write_text(json.dumps([asdict(r) for r in rows], indent=2))
    with (out / "metrics.csv").open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(RoundSummary.__dataclass_fields__))
        writer.writeheader()
        for row in rows:
            writer.writerow(asdict(row))


def write_plot(out: Path, rows: list[RoundSummary], title: str) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4), dpi=110)
    rounds = [r.round for r in rows]
    ax.plot(rounds, [r.accuracy for r in rows], marker="o", color="tab:blue", label="test accuracy")
    ax.set_xlabel("round")
    ax.set_ylabel("test accuracy", color="tab:blue")
    ax.set_ylim(0, 1)
    ax.grid(alpha=0.3)
    if any(r.epsilon is not None for r in rows):
        ax2 = ax.twinx()
        ax2.plot(rounds, [r.epsilon or 0.0 for r in rows], marker="s", color="tab:red", label="epsilon spent")
        ax2.set_ylabel("epsilon (max over clients)", color="tab:red")
        ax2.set_ylim(bottom=0)
    ax.set_title(title)
    fig.tight_layout()
    path = out / "accuracy_epsilon.png"
    fig.savefig(path)
    plt.close(fig)
    return path


def summary(
    *, run_id: str, config: RunConfig, rows: list[RoundSummary], reason: str, wall_seconds: float
) -> dict[str, Any]:
    last = rows[-1] if rows else None
    return {
        "run_id": run_id,
        "reason": reason,
        "rounds": len(rows),
        "final_accuracy": last.accuracy if last else None,
        "final_loss": last.loss if last else None,
        "epsilon": last.epsilon if last else None,
        "delta": config.privacy.delta if config.privacy.enabled else None,
        "dp": config.privacy.enabled,
        "wall_seconds": round(wall_seconds, 2),
        "clients": config.clients,
        "dataset": config.dataset,
        "model": config.model,
        "partition": config.partition,
        "compression": config.compression,
        "bytes_sent": sum(r.bytes_sent for r in rows),
        "compression_ratio": (sum(r.raw_bytes for r in rows) / max(1, sum(r.bytes_sent for r in rows))),
        "config": config.to_dict(),
    }
