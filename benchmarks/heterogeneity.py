"""Heterogeneous clients: synchronous FedAvg, quorum 0.8, capability-aware plans and FedBuff on the same seeded
slow devices and links.

The devices and links are latency.py's emulation (`SlowTrainer` adds each client's device time to its real
training, in proportion to the steps it took; `ThrottledClient` holds each upload for size / uplink), with the
uplinks spread over 0.5-50 Mbit/s. Every mode sends int8 updates unless its plans choose a smaller codec:

- **synchronous**: FedAvg, quorum 1.0: every round waits for the slowest client.
- **quorum 0.8**: FedAvg, quorum 0.8, grace 0: the slowest fifth's updates are recorded late, not aggregated.
- **capability-aware**: quorum 0.8 with ``[run.plans] adaptive``: from its second round each client trains the
  local steps that fit the median client's round time (at least a quarter epoch) and sends int8, or
  top-k 10% + int8 when int8 would take more than half of that time on its link.
- **FedBuff**: buffers of K updates, every client training at once, staleness weight (1 + tau)^-0.5, at most
  4 versions stale; nobody's work is cut off. K is chosen from two values at the first client count by time to
  target (the other modes have no knob left: the issue fixes their quorums), and the page shows both.

Three settings, each a table: without DP on an IID split and on Dirichlet(0.5) over the labels, and with
record-level DP on the IID split.

The run budget is the same number of client updates for every mode: `rounds` rounds of all clients, i.e.
rounds * clients / K buffers for FedBuff.
"""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Sequence
from concurrent.futures import Executor
from dataclasses import dataclass
from pathlib import Path

from benchmarks import plots
from benchmarks.federation import FederatedResult, bench_config, data_scope, federate, partition_label, reached
from benchmarks.latency import STRAGGLERS, Device, SlowTrainer, ThrottledClient, draw_devices
from benchmarks.progress import say
from contracts.capability import PlansConfig
from contracts.run_state import quorum_size
from contracts.strategy import FEDBUFF, StrategyConfig

UPLINK_MBIT = (0.5, 50.0)
# Small batches, so that a client has local steps to spare: at 50 clients of 6,000 samples, batch 128 is one step
# a round and a plan could cut nothing. The same for every mode.
BATCH_SIZE, LR = 32, 0.2
PLANS = PlansConfig(adaptive=True, codecs=("int8", "topk:0.1+int8"))  # target: the median; min_work 0.25
BUFFER_FRACTIONS = (0.2, 0.4)  # FedBuff's K as a fraction of the clients, the two values tried
# Non-IID: quorum 0.8 drops the same stragglers every round, and with them their labels, which an IID split does
# not miss; the plans keep their updates in (whether that pays is what this setting measures).
NON_IID = "dirichlet:0.5"


@dataclass(frozen=True, slots=True)
class _Setting:
    """One table of the section: its data split, its privacy and the accuracy every mode is timed to."""

    name: str
    partition: str
    epsilon: float | None
    target: float
    rounds: int  # the budget: this many rounds of every client
    plot: Path


def _federate(
    executor: Executor,
    devices: list[Device],
    *,
    quorum: float,
    buffer: int | None,
    plans: PlansConfig | None,
    data_dir: str | None,
    rounds: int,
    train_limit: int | None,
    eval_limit: int | None,
    target: float,
    epsilon: float | None,
    partition: str,
) -> FederatedResult:
    clients = len(devices)
    strategy = StrategyConfig(name=FEDBUFF, options={"buffer_size": buffer}) if buffer else None
    config = bench_config(
        clients=clients,
        rounds=math.ceil(rounds * clients / buffer) if buffer else rounds,
        train_limit=train_limit,
        eval_limit=eval_limit,
        epsilon=epsilon,
        partition=partition,
        quorum=quorum,
        target_accuracy=target,
        strategy=strategy,
        plans=plans,
        batch_size=BATCH_SIZE,
        lr=LR,
    )
    return federate(
        config,
        executor,
        data_dir=data_dir,
        trainer_for=lambda index, pool: SlowTrainer(pool, devices[index]),
        transport_for=lambda index, address: ThrottledClient(address, devices[index]),
    )


def ceilings(devices: Sequence[Device], update_bytes: float, quorum: float = 0.8) -> tuple[float, float]:
    """What FedBuff and the capability-aware plans can gain over `quorum` on these devices, estimated from their
    emulated times alone (device time plus upload; the real training, the shared cores and what a round costs
    between its updates left out).

    FedBuff: its rate of updates with every client training back to back, over the quorum's (k updates a round,
    each round the k-th fastest client's time). The plans: the round brought from the k-th fastest client's time
    to the median's. Beyond these, a mode is faster to an accuracy only if each of its updates advances the model
    more than a quorum round's do, which staleness and fewer local steps do not give.
    """
    times = sorted(device.compute_s + update_bytes / device.uplink_bytes_per_s for device in devices)
    k = quorum_size(len(times), quorum, 1)
    kth = times[k - 1]
    return sum(1.0 / t for t in times) / (k / kth), kth / statistics.median(times)


def _time_to(result: FederatedResult, target: float) -> float:
    hit = reached(result.rows, target)
    return hit.elapsed_s if hit else math.inf


def run(
    executor: Executor,
    *,
    data_dir: str | None,
    client_counts: Sequence[int],
    rounds: int,
    train_limit: int | None,
    eval_limit: int | None,
    target: float,
    dp_epsilon: float,
    dp_target: float,
    dp_rounds: int,
    base_compute_s: float,
    plot: Path,
    noniid_plot: Path,
    dp_plot: Path,
) -> list[str]:
    """Every mode at every client count on the same devices: without DP (to `target`, within `rounds`) on an IID
    and a Dirichlet(0.5) split, and with record-level DP at `dp_epsilon` (to `dp_target`, within `dp_rounds`: the
    noise is calibrated over them) on the IID one; a table, the speed-ups and a plot for each."""

    settings = (
        _Setting("Without DP, IID", "iid", None, target, rounds, plot),
        _Setting(f"Without DP, {partition_label(NON_IID)}", NON_IID, None, target, rounds, noniid_plot),
        _Setting(
            f"With record-level DP, epsilon {dp_epsilon:g}, IID", "iid", dp_epsilon, dp_target, dp_rounds, dp_plot
        ),
    )

    def one(
        devices: list[Device], quorum: float, buffer: int | None, plans: PlansConfig | None, setting: _Setting
    ) -> FederatedResult:
        started = time.perf_counter()
        result = _federate(
            executor, devices, quorum=quorum, buffer=buffer, plans=plans, data_dir=data_dir, rounds=setting.rounds,
            train_limit=train_limit, eval_limit=eval_limit, target=setting.target, epsilon=setting.epsilon,
            partition=setting.partition,
        )  # fmt: skip
        synchronous = "synchronous" if quorum == 1.0 else f"quorum {quorum:g}"
        mode = f"FedBuff K={buffer}" if buffer else "capability-aware" if plans else synchronous
        say(
            f"heterogeneity: {len(devices)} clients, {setting.name}, {mode}: {_hit_text(result, setting.target)} "
            f"({time.perf_counter() - started:.0f} s)"
        )
        return result

    results: dict[_Setting, dict[tuple[int, str], FederatedResult]] = {setting: {} for setting in settings}
    tried: dict[int, FederatedResult] = {}
    chosen = 0.0
    devices_of: dict[int, list[Device]] = {}
    for index, count in enumerate(client_counts):
        devices = devices_of[count] = draw_devices(count, base_compute_s=base_compute_s, uplink_mbit=UPLINK_MBIT)
        for setting in settings:
            runs = results[setting]
            runs[(count, "synchronous")] = one(devices, 1.0, None, None, setting)
            runs[(count, "quorum 0.8")] = one(devices, 0.8, None, None, setting)
            runs[(count, "capability-aware")] = one(devices, 0.8, None, PLANS, setting)
            if index == 0 and setting is settings[0]:
                for fraction in BUFFER_FRACTIONS:
                    buffer = max(1, round(fraction * count))
                    tried[buffer] = one(devices, 1.0, buffer, None, setting)
                best = min(tried, key=lambda k: (_time_to(tried[k], target), -tried[k].rows[-1].accuracy))
                chosen = best / count
                runs[(count, f"FedBuff K={best}")] = tried[best]
            else:
                buffer = max(1, round(chosen * count))
                runs[(count, f"FedBuff K={buffer}")] = one(devices, 1.0, buffer, None, setting)
    samples, tests = data_scope(train_limit, eval_limit)
    lines = [
        f"`mnist_dp_cnn`, clients sharing {samples} MNIST training samples (IID, and without DP also "
        f"{partition_label(NON_IID)} over the labels), one local epoch per "
        f"round (batch {BATCH_SIZE}, lr {LR:g}, momentum 0.5), int8 updates, test accuracy "
        f"on {tests} test samples, until "
        f"{target:.0%} without DP (or {dp_target:.0%} with record-level DP at epsilon {dp_epsilon:g}, delta 1e-5, "
        f"clip 1.0, RDP) or the same budget of client updates ({rounds} x every client; {dp_rounds} x with DP). "
        "Seeded devices: "
        f"each client's round costs its real training plus {base_compute_s:g} s x a speed factor (1-1.5x; "
        f"{STRAGGLERS:.0%} stragglers at 3-5x), uploads through its own {UPLINK_MBIT[0]:g}-{UPLINK_MBIT[1]:g} "
        "Mbit/s uplink (log-uniform). Same devices for every mode; real gRPC, SQLite log, in-memory broker. "
        "**synchronous**: quorum 1.0. **quorum 0.8**: grace 0, the stragglers' updates recorded late. "
        "**capability-aware**: quorum 0.8 and `[run.plans] adaptive = true`, codecs int8 then top-k 10% + int8: "
        "from its second round each client trains the local steps that fit the median client's measured round "
        "time (at least a quarter epoch), and sends top-k when int8 would take over half of it on its link. "
        "**FedBuff**: buffers of K updates, every client training, staleness weight (1 + tau)^-0.5, at most 4 "
        "versions stale. With DP each client's noise is calibrated over the run's rounds (under FedBuff: over every "
        "buffer, though a client trains in only some), its ledger counts the steps it actually took, and a client "
        "whose next training would pass the budget declines.",
        "",
        f"FedBuff's K was tried at {client_counts[0]} clients without DP as "
        + ", ".join(f"{k} ({_hit_text(r, target)})" for k, r in tried.items())
        + f"; the better, K = {chosen:.0%} of the clients, is used at every count and setting.",
        "",
        _ceilings_text(devices_of, results[settings[0]]),
        "",
    ]
    for setting in settings:
        lines += [f"{setting.name}:", "", *_table(results[setting], setting.target), ""]
        lines += [f"![accuracy over wall-clock time, {setting.name}]({setting.plot.name})", ""]
        curves = {
            (f"{count} clients", mode.split(" K=")[0]): [(row.elapsed_s, row.accuracy) for row in result.rows]
            for (count, mode), result in results[setting].items()
        }
        plots.accuracy_over_time(setting.plot, curves, f"heterogeneous clients, {setting.name}")
    return lines


def _ceilings_text(devices_of: dict[int, list[Device]], runs: dict[tuple[int, str], FederatedResult]) -> str:
    """What `ceilings` allows at each client count, for the updates' mean size in quorum 0.8's runs."""
    sizes = [(row.bytes_sent, row.updates) for (_, mode), r in runs.items() if mode == "quorum 0.8" for row in r.rows]
    update_bytes = sum(b for b, _ in sizes) / max(1, sum(n for _, n in sizes))
    bounds = {count: ceilings(devices, update_bytes) for count, devices in devices_of.items()}
    counts = " / ".join(f"{count}" for count in bounds)
    return (
        f"What these devices allow ({counts} clients), from their emulated times alone (device time plus the "
        f"upload of an update of {update_bytes / 1000:.0f} KB): FedBuff takes about "
        + " / ".join(f"{fedbuff:.2f}x" for fedbuff, _ in bounds.values())
        + " quorum 0.8's updates per second, and the plans shorten its round about "
        + " / ".join(f"{plans:.2f}x" for _, plans in bounds.values())
        + ". Beyond that a mode must make each update count for more, which staleness and fewer local steps do "
        "not. The estimate leaves out what a round costs between its updates (aggregation, evaluation, the next "
        "round's start), which FedBuff overlaps with training, so FedBuff can come out a little above it."
    )


def _table(results: dict[tuple[int, str], FederatedResult], target: float) -> list[str]:
    return [
        f"| clients | mode | server steps | median step time | steps to {target:.0%} | time to {target:.0%} "
        "| final accuracy | speed-up over quorum 0.8 |",
        "|---|---|---|---|---|---|---|---|",
        *(
            _row(count, mode, result, results[(count, "quorum 0.8")], target)
            for (count, mode), result in results.items()
        ),
    ]


def _hit_text(result: FederatedResult, target: float) -> str:
    hit = reached(result.rows, target)
    return f"{hit.elapsed_s:.1f} s to {target:.0%}" if hit else f"not reached, {result.rows[-1].accuracy:.1%}"


def _row(count: int, mode: str, result: FederatedResult, quorum: FederatedResult, target: float) -> str:
    times = sorted(row.duration_s for row in result.rows)
    median = f"{times[len(times) // 2]:.2f} s" if times else "-"
    hit = reached(result.rows, target)
    final = f"{result.rows[-1].accuracy:.2%}" if result.rows else "-"
    ours, theirs = _time_to(result, target), _time_to(quorum, target)
    speedup = f"**{theirs / ours:.2f}x**" if math.isfinite(ours) and math.isfinite(theirs) else "n/a"
    return (
        f"| {count} | {mode} | {len(result.rows)} | {median} | {hit.round if hit else '-'} | "
        f"{f'{hit.elapsed_s:.1f} s' if hit else 'not reached'} | {final} | {speedup} |"
    )
