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


def _flat(row: RoundSummary) -> dict[str, Any]:
    """A round's figures, the federated evaluation of the model it started from as federated_* columns."""
    flat = {k: v for k, v in asdict(row).items() if k != "federated"}
    evaluation = row.federated
    flat["federated_accuracy"] = evaluation.metrics.get("accuracy") if evaluation else None
    flat["federated_loss"] = evaluation.metrics.get("loss") if evaluation else None
    flat["federated_samples"] = evaluation.samples if evaluation else 0
    return flat


def write_metrics(out: Path, rows: list[RoundSummary]) -> None:
    flat = [_flat(r) for r in rows]
    (out / "metrics.json").write_text(json.dumps(flat, indent=2))
    with (out / "metrics.csv").open("w", newline="") as f:
        fields = [k for k in RoundSummary.__dataclass_fields__ if k != "federated"]
        writer = csv.DictWriter(f, fieldnames=[*fields, "federated_accuracy", "federated_loss", "federated_samples"])
        writer.writeheader()
        writer.writerows(flat)


def write_plot(out: Path, rows: list[RoundSummary], title: str) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4), dpi=110)
    rounds = [r.round for r in rows]
    central = [(r.round, r.accuracy) for r in rows if r.central]
    federated = [(r.round, r.federated_accuracy) for r in rows if r.federated_accuracy is not None]
    if central:
        ax.plot(*zip(*central, strict=True), marker="o", color="tab:blue", label="test accuracy")
    if federated:  # the clients' test data, on the model each round started from
        ax.plot(*zip(*federated, strict=True), marker="^", color="tab:cyan", label="federated accuracy")
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
        "final_accuracy": last.accuracy if last and last.central else None,
        "final_loss": last.loss if last and last.central else None,
        "federated_accuracy": next((r.federated_accuracy for r in reversed(rows) if r.federated), None),
        "epsilon": last.epsilon if last else None,
        "delta": config.privacy.delta if config.privacy.enabled else None,
        "dp": config.privacy.enabled,
        "accountant": config.privacy.accountant if config.privacy.enabled or config.user_privacy.enabled else None,
        "user_dp": config.user_privacy.enabled,
        "user_epsilon": last.user_epsilon if last else None,
        "user_delta": config.user_privacy.delta if config.user_privacy.enabled else None,
        "privacy": privacy_levels(config, last),
        "wall_seconds": round(wall_seconds, 2),
        "clients": config.clients,
        "task": config.task,
        "partition": config.partition,
        "compression": config.compression,
        "bytes_sent": sum(r.bytes_sent for r in rows),
        "compression_ratio": (sum(r.raw_bytes for r in rows) / max(1, sum(r.bytes_sent for r in rows))),
        "config": config.to_dict(),
    }


def privacy_levels(config: RunConfig, last: RoundSummary | None) -> dict[str, Any]:
    """Both privacy levels a run may have, accounted with the run's one accountant (`privacy.accountant`)."""
    record, user = config.privacy, config.user_privacy
    return {
        "accountant": record.accountant,
        "record_level": {
            "enabled": record.enabled,
            "protects": "one training example of a client (DP-SGD at each client)",
            "epsilon": last.epsilon if last and record.enabled else None,  # the most any client spent
            "target_epsilon": record.epsilon if record.enabled else None,
            "delta": record.delta if record.enabled else None,
        },
        "user_level": {
            "enabled": user.enabled,
            "protects": "all of one client's data (DP-FedAvg at the aggregator)",
            "epsilon": last.user_epsilon if last else None,
            "budget_epsilon": user.epsilon if user.enabled else None,
            "delta": user.delta if user.enabled else None,
            "amplified": last.user_epsilon_amplified if last else None,
            "reason": last.user_epsilon_reason if last else None,
            "sample_rate": user.sample_rate if user.enabled else None,
            "noise_multiplier": user.noise_multiplier if user.enabled else None,
            "clip_norm": last.user_clip_norm if last else None,  # the last round's
        },
    }
