"""Federated evaluation: the clients' eval_* scores weighted by their test samples, in the fold and the API."""

from __future__ import annotations

import pytest

from contracts.config import RunConfig
from contracts.evaluation import federated_evaluation
from contracts.events import RoundAggregated, RoundStarted, RunCreated, UpdateAccepted
from contracts.run_state import state_from_created
from services.api.presenters import rounds_view


def test_scores_are_weighted_by_test_samples_and_clients_without_test_data_are_left_out() -> None:
    reports = [
        {"loss": 1.0, "eval_samples": 100.0, "eval_accuracy": 0.9, "eval_loss": 0.3},
        {"loss": 1.0, "eval_samples": 300.0, "eval_accuracy": 0.5, "eval_loss": 0.7},
        {"loss": 1.0},  # no test data at this site
        {"eval_samples": 0.0, "eval_accuracy": 1.0},  # an empty test split counts for nothing
    ]

    evaluation = federated_evaluation(4, reports)

    assert evaluation is not None
    assert (evaluation.model_version, evaluation.samples, evaluation.clients) == (4, 400, 2)
    assert evaluation.metrics == pytest.approx({"accuracy": 0.6, "loss": 0.6})
    assert federated_evaluation(4, [{"loss": 1.0}]) is None


def accepted(client: str, round_: int, **metrics: float) -> UpdateAccepted:
    return UpdateAccepted(
        run_id="r", round=round_, update_id=f"u-{client}-{round_}", client_id=client, num_samples=10, digest="d",
        wire_bytes=1, raw_bytes=4, ratio=4.0, epsilon=None, metrics={"loss": 1.0, **metrics},
    )  # fmt: skip


def test_the_fold_scores_the_model_each_round_started_from() -> None:
    run = state_from_created(RunCreated(run_id="r", config=RunConfig(clients=2).to_dict()), 0.0)
    started = RoundStarted(
        run_id="r", round=2, attempt=1, model_version=1, model_digest="m1", selected=("a", "b"), deadline=9.0, train={}
    )
    run.apply(started, 1.0)
    run.apply(accepted("a", 2, eval_samples=50.0, eval_accuracy=0.8), 2.0)
    run.apply(accepted("b", 2, eval_samples=150.0, eval_accuracy=0.4), 2.0)
    run.apply(
        RoundAggregated(
            run_id="r", round=2, model_version=2, model_digest="m2", num_updates=2, metrics={}, duration_s=0.1
        ),
        3.0,
    )

    [summary] = run.summaries
    assert summary.federated is not None and summary.federated.model_version == 1
    assert summary.federated_accuracy == pytest.approx(0.5) and summary.federated.samples == 200


def test_the_api_shows_each_rounds_federated_evaluation_or_null() -> None:
    row = {
        "round": 2, "attempt": 1, "status": "aggregated", "model_version": 1, "model_digest": "m1",
        "selected": ["a"], "plans": {}, "deadline": 9.0, "started_at": 1.0, "quorum_at": 2.0, "aggregated_at": 3.0,
        "partial": False, "new_model_version": 2, "new_model_digest": "m2", "metrics": {}, "duration_s": 1.0,
        "failure_reason": None, "update_ids": ["u"],
    }  # fmt: skip
    update = {
        "round": 2, "update_id": "u", "client_id": "a", "num_samples": 10, "digest": "d", "wire_bytes": 1,
        "raw_bytes": 4, "ratio": 4.0, "epsilon": None, "late": False, "model_version": 1, "accepted_at": 2.0,
        "metrics": {"eval_samples": 20.0, "eval_accuracy": 0.75, "eval_loss": 0.5},
    }  # fmt: skip

    [view] = rounds_view([row], [update], [], [])
    [without] = rounds_view([{**row, "round": 3}], [], [], [])

    assert view["federated_evaluation"] == {
        "model_version": 1, "samples": 20, "clients": 1, "accuracy": 0.75, "loss": 0.5
    }  # fmt: skip
    assert without["federated_evaluation"] is None
