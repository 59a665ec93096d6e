"""The ServerApp: Flower's FedAvg (weighted by samples, every node every round), fedbus's evaluation.

After each round the global model is evaluated on the test set with `workers.learning.training.evaluate`
(as fedbus's aggregator does) and the round's start, end and accuracy are written to the `timings` JSON
file that benchmarks/flower.py reads. Times are seconds since this ServerApp started.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MetricRecord
from flwr.serverapp import Grid, ServerApp
from flwr.serverapp.strategy import FedAvg

from fedbus_flower.task import MODEL, from_record, task_from, to_record
from workers.learning.training import evaluate, init_worker, initial_weights

app = ServerApp()


class TimedFedAvg(FedAvg):  # type: ignore[misc]  # FedAvg is Any where flwr is not installed
    """FedAvg that notes when each round's training is sent out and the clients' epsilons."""

    def __init__(self, clock: float, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.clock = clock
        self.started: dict[int, float] = {}
        self.epsilon: dict[int, float] = {}
        self.train_seconds: dict[int, float] = {}

    def configure_train(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid) -> Any:
        self.started[server_round] = time.time() - self.clock
        return super().configure_train(server_round, arrays, config, grid)

    def aggregate_train(self, server_round: int, replies: Iterable[Message]) -> Any:
        replies = list(replies)
        metrics = [m.content["metrics"] for m in replies if m.has_content()]
        self.epsilon[server_round] = max((float(m["epsilon"]) for m in metrics), default=0.0)
        self.train_seconds[server_round] = max((float(m["train-seconds"]) for m in metrics), default=0.0)
        return super().aggregate_train(server_round, replies)


@app.main()  # type: ignore[untyped-decorator]  # flwr is not in the main venv mypy runs in
def main(grid: Grid, context: Context) -> None:
    clock = time.time()
    init_worker()
    task = task_from(context)
    nodes = task.nodes
    strategy = TimedFedAvg(
        clock,
        fraction_train=1.0,
        fraction_evaluate=0.0,
        min_train_nodes=nodes,
        min_available_nodes=nodes,
    )
    rows: list[dict[str, float]] = []

    def write(finished: bool) -> None:
        if task.timings:
            path = Path(task.timings)
            temporary = path.with_suffix(".tmp")
            temporary.write_text(json.dumps({"rounds": rows, "finished": finished, "nodes": nodes}))
            temporary.replace(path)

    def evaluate_fn(server_round: int, arrays: ArrayRecord) -> MetricRecord | None:
        if server_round == 0:  # fedbus does not evaluate the initial model either
            return None
        metrics = evaluate(from_record(arrays), task=MODEL, data_dir=task.data_dir, limit=task.eval_limit)
        ended = time.time() - clock
        rows.append(
            {
                "round": server_round,
                "started_s": strategy.started.get(server_round, ended),
                "ended_s": ended,
                "accuracy": metrics["accuracy"],
                "loss": metrics["loss"],
                "epsilon": strategy.epsilon.get(server_round, 0.0),
                "train_seconds": strategy.train_seconds.get(server_round, 0.0),
            }
        )
        write(False)
        return MetricRecord(metrics)

    strategy.start(
        grid=grid,
        initial_arrays=to_record(initial_weights(MODEL, seed=task.seed)),
        num_rounds=task.rounds,
        timeout=3600.0,
        evaluate_fn=evaluate_fn,
    )
    write(True)
