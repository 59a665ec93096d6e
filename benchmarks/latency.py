"""Round latency with slow clients and slow links: fedbus (quorum 0.8, int8) against a synchronous baseline.

Nothing in the product is changed: the benchmark composes the deployed code (benchmarks/federation.py) with
two wrapped classes. `SlowTrainer` adds each client's emulated device time to its real local training, and
`ThrottledClient` holds each upload for len(payload) / uplink before sending it, one upload at a time per
client (a token bucket with no burst). Devices are drawn once per client count with a fixed seed, so both
modes see exactly the same clients.
"""

from __future__ import annotations

import asyncio
import math
import random
import statistics
from collections.abc import Sequence
from concurrent.futures import Executor
from dataclasses import dataclass
from pathlib import Path

from benchmarks import plots
from benchmarks.federation import FederatedResult, bench_config, federate, reached
from contracts.capability import full_steps
from contracts.proto.fedbus.v1 import federation_pb2 as pb
from contracts.tensors import TensorMapping
from contracts.uploads import UploadHeader
from fedbus.data import DataRequest
from workers.client.trainer import PoolTrainer
from workers.client.transport import FederationClient
from workers.learning.local_round import LocalTrainConfig, LocalTrainResult

STRAGGLERS = 0.2  # the fraction of clients 3-5x slower than the rest
UPLINK_MBIT = (0.5, 5.0)  # per-client uplink, log-uniform, in Mbit/s (mobile-class)


@dataclass(frozen=True, slots=True, kw_only=True)
class Device:
    compute_s: float  # emulated device time per local round, on top of the real training
    uplink_bytes_per_s: float
    straggler: bool


def draw_devices(
    count: int, *, base_compute_s: float, seed: int = 0, uplink_mbit: tuple[float, float] = UPLINK_MBIT
) -> list[Device]:
    """Seeded devices: most 1-1.5x `base_compute_s`, a fifth 3-5x; uplinks log-uniform in `uplink_mbit`."""
    rng = random.Random(seed * 1000 + count)
    slow = set(rng.sample(range(count), round(STRAGGLERS * count)))
    devices = []
    for index in range(count):
        factor = rng.uniform(3.0, 5.0) if index in slow else rng.uniform(1.0, 1.5)
        mbit = math.exp(rng.uniform(math.log(uplink_mbit[0]), math.log(uplink_mbit[1])))
        devices.append(
            Device(compute_s=base_compute_s * factor, uplink_bytes_per_s=mbit * 1e6 / 8, straggler=index in slow)
        )
    return devices


class SlowTrainer(PoolTrainer):
    """The pool trainer, then the device's extra compute time (the pool's cores stand in for many devices), in
    proportion to the steps taken: a capability-aware plan that halves a client's steps halves its device time."""

    def __init__(self, executor: Executor, device: Device) -> None:
        super().__init__(executor)
        self._device = device

    async def train(
        self, base: TensorMapping, request: DataRequest, config: LocalTrainConfig, ledger: dict[str, object] | None
    ) -> LocalTrainResult:
        result = await super().train(base, request, config, ledger)
        full = full_steps(config.epochs, result.num_samples, config.batch_size)
        await asyncio.sleep(self._device.compute_s * min(1.0, result.steps / full) if full else 0.0)
        return result


class ThrottledClient(FederationClient):
    """The real gRPC client behind an emulated uplink: uploads queue on the link and take size / bandwidth."""

    def __init__(self, address: str, device: Device) -> None:
        super().__init__(address, deadline_s=600.0)
        self._device = device
        self._link_free_at = 0.0

    async def upload(self, header: UploadHeader, payload: bytes) -> pb.UploadReply:
        now = asyncio.get_running_loop().time()
        start = max(now, self._link_free_at)
        self._link_free_at = start + len(payload) / self._device.uplink_bytes_per_s
        await asyncio.sleep(self._link_free_at - now)
        return await super().upload(header, payload)


MODES = {"synchronous": (1.0, "fp32"), "fedbus": (0.8, "int8")}  # quorum, codec; grace 0 for both


def _federate(
    executor: Executor,
    devices: list[Device],
    mode: str,
    *,
    data_dir: str | None,
    rounds: int,
    train_limit: int | None,
    eval_limit: int | None,
    target: float,
) -> FederatedResult:
    quorum, codec = MODES[mode]
    config = bench_config(
        clients=len(devices),
        rounds=rounds,
        train_limit=train_limit,
        eval_limit=eval_limit,
        epsilon=None,
        compression=codec,
        quorum=quorum,
        target_accuracy=target,
    )
    return federate(
        config,
        executor,
        data_dir=data_dir,
        trainer_for=lambda index, pool: SlowTrainer(pool, devices[index]),
        transport_for=lambda index, address: ThrottledClient(address, devices[index]),
    )


def run(
    executor: Executor,
    *,
    data_dir: str | None,
    client_counts: Sequence[int],
    rounds: int,
    train_limit: int | None,
    eval_limit: int | None,
    target: float,
    base_compute_s: float,
    plot: Path,
) -> list[str]:
    """Both modes at every client count, interleaved; the tables, the reduction and an accuracy-over-time plot."""
    results: dict[tuple[int, str], FederatedResult] = {}
    for count in client_counts:
        devices = draw_devices(count, base_compute_s=base_compute_s)
        for mode in MODES:
            results[(count, mode)] = _federate(
                executor, devices, mode, data_dir=data_dir, rounds=rounds, train_limit=train_limit,
                eval_limit=eval_limit, target=target,
            )  # fmt: skip
    samples = f"the first {train_limit:,}" if train_limit else "all 60,000"
    lines = [
        f"`mnist_dp_cnn` without DP, clients sharing {samples} MNIST training samples (IID), one local epoch per "
        f"round (batch 128, lr 0.5, momentum 0.5), until {target:.0%} test accuracy or {rounds} rounds. Emulated "
        f"devices: each client's round costs its real training plus {base_compute_s:g} s x a speed factor "
        f"(1-1.5x; {STRAGGLERS:.0%} of clients are stragglers at 3-5x), and its uploads go through its own "
        f"{UPLINK_MBIT[0]:g}-{UPLINK_MBIT[1]:g} Mbit/s uplink (log-uniform). **synchronous**: wait for every "
        "client (quorum 1.0), fp32 updates. **fedbus**: quorum 0.8 with grace 0, int8 updates. Same seeded "
        "devices for both; real gRPC, SQLite log and in-memory broker.",
        "",
        f"| clients | mode | bytes per update | time per round (min / median / max) | rounds to {target:.0%} "
        f"| time to {target:.0%} | final accuracy |",
        "|---|---|---|---|---|---|---|",
    ]
    for (count, mode), result in results.items():
        lines.append(_row(count, mode, result, target))
    lines += ["", "| clients | median round time reduction | time-to-target reduction | >= 25%? |", "|---|---|---|---|"]
    for count in client_counts:
        lines.append(_reduction(count, results[(count, "synchronous")], results[(count, "fedbus")], target))
    curves = {
        (f"{count} clients", mode): [(row.elapsed_s, row.accuracy) for row in result.rows]
        for (count, mode), result in results.items()
    }
    plots.accuracy_over_time(plot, curves, "fedbus (quorum 0.8, int8) vs synchronous (quorum 1.0, fp32)")
    lines += ["", f"![accuracy over wall-clock time]({plot.name})"]
    return lines


def _round_times(result: FederatedResult) -> list[float]:
    return [row.duration_s for row in result.rows]


def _row(count: int, mode: str, result: FederatedResult, target: float) -> str:
    times = _round_times(result)
    updates = sum(row.updates for row in result.rows)
    size = sum(row.bytes_sent for row in result.rows) / updates if updates else 0.0
    spread = f"{min(times):.2f} / {statistics.median(times):.2f} / {max(times):.2f} s" if times else "-"
    hit = reached(result.rows, target)
    final = f"{result.rows[-1].accuracy:.2%}" if result.rows else "-"
    to_rounds = str(hit.round) if hit else f"not in {len(result.rows)}"
    to_time = f"{hit.elapsed_s:.1f} s" if hit else "-"
    return f"| {count} | {mode} | {size:,.0f} | {spread} | {to_rounds} | {to_time} | {final} |"


def _reduction(count: int, sync: FederatedResult, ours: FederatedResult, target: float) -> str:
    sync_times, our_times = _round_times(sync), _round_times(ours)
    per_round = 1 - statistics.median(our_times) / statistics.median(sync_times) if sync_times and our_times else None
    sync_hit, our_hit = reached(sync.rows, target), reached(ours.rows, target)
    to_target = 1 - our_hit.elapsed_s / sync_hit.elapsed_s if sync_hit and our_hit else None
    met = per_round is not None and per_round >= 0.25 and (to_target is None or to_target >= 0.25)
    return f"| {count} | {_percent(per_round)} | {_percent(to_target)} | {'yes' if met else 'no'} |"


def _percent(value: float | None) -> str:
    return f"**{value:.0%}**" if value is not None else "n/a (target not reached by both)"
