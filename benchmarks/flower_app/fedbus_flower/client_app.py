"""The ClientApp: fedbus's client step (workers/client/worker.py) with fedbus's learning code.

Per round: this node's IID partition (`partition_indices`, same seed, same split as fedbus), the noise
multiplier from `plan_privacy` for its own sample count over the planned rounds, then `train_local` (DP-SGD
through Opacus) from the global weights, with fedbus's per-round seed. The privacy ledger and the plan live
in the node's `context.state`, as fedbus keeps them in the client's run memory.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from flwr.app import ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from fedbus.data import DataRequest, Simulation
from fedbus_flower.task import MODEL, PARTITION, from_record, task_from, to_record
from workers.learning.local_round import LocalTrainConfig
from workers.learning.privacy import plan_privacy
from workers.learning.training import init_worker, local_data, train_local

app = ClientApp()
_STATE = "fedbus"


@app.train()  # type: ignore[untyped-decorator]  # flwr is not in the main venv mypy runs in
def train(msg: Message, context: Context) -> Message:
    init_worker()  # one torch thread, as in fedbus's pool workers
    task = task_from(context)
    index = int(context.node_config["partition-id"])
    count = int(context.node_config["num-partitions"])
    server_round = int(msg.content["config"]["server-round"])
    simulation = Simulation(
        scheme=PARTITION,
        clients=count,
        index=index,
        seed=task.seed,
        limit=task.train_limit,
        dataset_dir=Path(task.data_dir) if task.data_dir else None,
    )
    request = DataRequest(simulation=simulation)  # the same seeded share as fedbus' simulated client `index`
    num_samples = len(local_data(MODEL, request).train)  # type: ignore[arg-type]
    memory = context.state.config_records.get(_STATE)
    if memory is None:
        plan = plan_privacy(
            target_epsilon=task.epsilon,
            delta=task.delta,
            num_samples=num_samples,
            batch_size=task.batch_size,
            epochs_per_round=task.local_epochs,
            rounds=task.rounds,
        )
        memory = ConfigRecord({"noise-multiplier": plan.noise_multiplier, "ledger": ""})
    ledger = json.loads(str(memory["ledger"])) if memory["ledger"] else None
    config = LocalTrainConfig(
        task=MODEL,
        epochs=task.local_epochs,
        batch_size=task.batch_size,
        lr=task.lr,
        momentum=task.momentum,
        dp=True,
        max_grad_norm=task.max_grad_norm,
        noise_multiplier=float(memory["noise-multiplier"]),
        delta=task.delta,
        seed=task.seed * 1000 + server_round * 7 + index,
    )
    base = from_record(msg.content["arrays"])
    result = train_local(base, request, config, ledger)
    memory["ledger"] = json.dumps(result.ledger)
    context.state.config_records[_STATE] = memory
    trained = {name: np.add(base[name], result.delta[name], dtype=np.float32) for name in base}
    metrics = MetricRecord(
        {
            "num-examples": result.num_samples,
            "epsilon": float(result.epsilon or 0.0),
            "train-loss": float(result.metrics["loss"]),
            "train-seconds": float(result.metrics["train_seconds"]),
        }
    )
    return Message(content=RecordDict({"arrays": to_record(trained), "metrics": metrics}), reply_to=msg)
