"""Each benchmark runs on tiny settings and writes its tables (figures come from `make bench`, not from tests)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from benchmarks import dp_sweep
from benchmarks.run import main


# Every section, the deployed ones (scale, start-up, Flower) included: ~5 minutes on a 2-core machine, so more than
# the suite's 300 s per test.
@pytest.mark.timeout(900)
def test_benchmarks_run_on_tiny_settings(tmp_path: Path) -> None:
    out = tmp_path / "benchmarks.md"

    assert main(["--profile", "smoke", "--out", str(out)]) == 0

    text = out.read_text()
    sections = (
        "## Aggregation throughput",
        "## Compression",
        "## Local DP training: framework overhead, CPU and GPU",
        "## Load",
        "## Privacy-utility trade-off",
        "## User-level DP: DP-FedAvg with adaptive clipping",
        "## Strategies: FedAvg, FedAvgM, FedAdam, FedYogi, FedProx",
        "## Federated vs centralized DP training",
        "## Compression and accuracy",
        "## Latency with stragglers and slow uplinks",
        "## Heterogeneous clients: synchronous, quorum 0.8, capability-aware plans and FedBuff",
        "## Scale on RabbitMQ and PostgreSQL",
        "## Start-up of a deployment: fedbus up",
        "## Against a peer: Flower",
    )
    for section in sections:
        assert section in text
    assert "Machine: " in text and "| int8 |" in text and "| `cpu` | 64 | 300 |" in text
    assert "| IID | no DP |" in text and "| centralized |" in text and "| topk:0.01+int8 |" in text
    assert "| 10 | synchronous |" in text and "| 10 | fedbus |" in text
    assert "| 5 | quorum 0.8 |" in text and "| 5 | capability-aware |" in text and "| 5 | FedBuff K=" in text
    assert "With record-level DP, epsilon 3, IID:" in text and "Without DP, Dirichlet(0.5):" in text
    assert text.count("| 5 | FedBuff K=") == 3
    for figure in ("heterogeneity.png", "heterogeneity_noniid.png", "heterogeneity_dp.png"):
        assert (tmp_path / figure).is_file()
    assert "| fedbus | embedded, fp32 | 1 |" in text and "| fedbus | embedded, int8 | 1 |" in text
    assert (tmp_path / "flower.png").stat().st_size > 0
    assert "| FedProx (mu " in text and "| no user-level DP | - |" in text
    for figure in ("strategies.png", "user_privacy.png"):
        assert (tmp_path / figure).stat().st_size > 0
    assert (tmp_path / "privacy_utility.png").stat().st_size > 0 and (tmp_path / "latency.png").stat().st_size > 0
    if os.environ.get("FEDBUS_REQUIRE_SERVICES") == "1":  # CI: the deployed scale run happened on real services
        assert "| 3 | " in text and "aggregator's peak memory" in text and (tmp_path / "scale.png").stat().st_size > 0
        assert "| **ready** (RunCreated) | " in text and "| round 1 aggregated | " in text


def test_dp_sweep_runs_both_sides_within_the_budget(tmp_path: Path) -> None:
    out = tmp_path / "dp_sweep.md"
    argv = ["--trials", "2", "--epochs", "1", "--train-limit", "600", "--eval-limit", "200", "--out", str(out)]

    assert dp_sweep.main(argv) == 0

    text = out.read_text()
    assert "## Federated trials, best first" in text and "## Centralized trials, best first" in text
    assert "the first 600 MNIST training and 200 test samples" in text and "full MNIST" not in text
    record = json.loads(out.with_suffix(".json").read_text())
    trials = record["trials"]
    sides = ["centralized", "centralized", "federated", "federated", "federated"]  # and the demo's settings
    assert sorted(t["side"] for t in trials) == sides
    assert [t["trial"] for t in trials if t["side"] == "federated"] == [dp_sweep.DEMO_TRIAL, 0, 1]
    for trial in trials:  # every trial spent the budget it was calibrated to, and no more
        assert trial["epsilon"] is not None and 1.0 < trial["epsilon"] <= 2.0 + 1e-6, trial
        assert trial["curve"] and all(0.0 <= accuracy <= 1.0 for accuracy in trial["curve"])
    assert len({json.dumps(t["settings"], sort_keys=True) for t in trials if t["side"] == "federated"}) == 3

    # A resumed sweep takes every trial from the JSON (the same wall times: none ran again) ...
    again = tmp_path / "again.md"
    assert dp_sweep.main([*argv[:-1], str(again), "--resume", str(out.with_suffix(".json"))]) == 0
    assert json.loads(again.with_suffix(".json").read_text())["trials"] == trials
    # ... and refuses another sweep's, here one at another epsilon.
    with pytest.raises(SystemExit) as refused:
        dp_sweep.main([*argv, "--epsilon", "3", "--resume", str(out.with_suffix(".json"))])
    assert refused.value.code == 2
    assert out.with_suffix(".png").stat().st_size > 0
