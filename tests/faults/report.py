"""The fault report: a table for the terminal and tests/faults/artifacts/fault_report.json (gitignored)."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any

from contracts.events import Event, RoundAggregated, RunCompleted, UpdateAccepted
from tests.deployed.world import of_type
from tests.faults.accounting import Accounting
from tests.faults.injector import FaultRecord

ARTIFACTS = Path(__file__).resolve().parent / "artifacts"


def mark_survivors(records: list[FaultRecord], final_events: int, run_completed: bool) -> None:
    """A fault was survived when everything came back and the run went on to complete after it."""
    for record in records:
        record.survived = record.recovered and run_completed and final_events > record.events_at_fault


def epsilon_regressions(events: list[Event]) -> list[str]:
    """Clients whose reported epsilon went down from one accepted update to the next (privacy spent forgotten)."""
    last: dict[str, tuple[int, float]] = {}
    found = []
    for event in of_type(events, UpdateAccepted):
        if event.epsilon is None:
            continue
        before = last.get(event.client_id)
        if before is not None and event.epsilon < before[1] - 1e-9:
            found.append(
                f"{event.client_id}: epsilon {before[1]:.3f} (round {before[0]})"
                f" -> {event.epsilon:.3f} (round {event.round})"
            )
        last[event.client_id] = (event.round, event.epsilon)
    return found


def build_report(
    *,
    seed: int,
    records: list[FaultRecord],
    accounting: Accounting,
    events: list[Event],
    dead_letters: int,
    wall_s: float,
) -> dict[str, Any]:
    done = of_type(events, RunCompleted)
    by_kind = Counter(r.kind for r in records)
    survived = Counter(r.kind for r in records if r.survived)
    return {
        "seed": seed,
        "wall_s": round(wall_s, 1),
        "run_completed": bool(done),
        "completion_reason": done[0].reason if done else None,
        "faults_injected": len(records),
        "faults_survived": sum(survived.values()),
        "by_kind": {kind: {"injected": n, "survived": survived[kind]} for kind, n in sorted(by_kind.items())},
        "rounds_aggregated": [e.round for e in of_type(events, RoundAggregated)],
        "accuracy": [round(float(e.metrics.get("accuracy", 0.0)), 4) for e in of_type(events, RoundAggregated)],
        "attempts": accounting.attempts,
        "retries_round_failed": accounting.rounds_failed,
        "updates_accepted": accounting.accepted,
        "updates_late": accounting.late,
        "updates_rejected": accounting.rejected,
        "lost": accounting.lost,
        "duplicated": accounting.duplicated,
        "aggregated_twice": accounting.aggregated_twice,
        "unexpected": accounting.unexpected,
        "unaggregated": accounting.unaggregated,
        "problems": list(accounting.problems),
        "dead_letters": dead_letters,
        "epsilon_regressions": epsilon_regressions(events),
        "faults": [r.to_json() for r in records],
    }


def write_report(report: dict[str, Any]) -> Path:
    ARTIFACTS.mkdir(exist_ok=True)
    path = ARTIFACTS / "fault_report.json"
    path.write_text(json.dumps(report, indent=2) + "\n")
    return path


def table(report: dict[str, Any]) -> str:
    """The report as a few aligned lines."""
    lines = [f"fault injection (seed {report['seed']}, {report['wall_s']}s): {report['completion_reason']}"]
    lines.append(f"{'kind':<18}{'injected':>9}{'survived':>9}")
    for kind, counts in report["by_kind"].items():
        lines.append(f"{kind:<18}{counts['injected']:>9}{counts['survived']:>9}")
    lines.append(f"{'total':<18}{report['faults_injected']:>9}{report['faults_survived']:>9}")
    lines.append(
        f"rounds {report['rounds_aggregated']}, attempts {report['attempts']}, "
        f"retries {report['retries_round_failed']}, "
        f"accepted {report['updates_accepted']} (late {report['updates_late']}), rejected {report['updates_rejected']}"
    )
    lines.append(
        f"lost {report['lost']}, duplicated {report['duplicated']}, aggregated twice {report['aggregated_twice']}, "
        f"unexpected {report['unexpected']}, unaggregated {report['unaggregated']}; "
        f"dead letters {report['dead_letters']}, epsilon regressions {len(report['epsilon_regressions'])}"
    )
    for record in report["faults"]:
        lines.append(
            f"  #{record['index']:<3}{record['at_s']:>7.1f}s r{record['round']} {record['kind']:<17}"
            f"{record['target']:<13}{record['trigger']:<15}back in {record['recovered_s']}s  {record['detail']}"
        )
    return "\n".join(lines)
