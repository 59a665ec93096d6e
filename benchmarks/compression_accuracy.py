"""What each update codec costs in accuracy: the same federation with fp32, fp16, int8 and top-k updates."""

from __future__ import annotations

from concurrent.futures import Executor

from benchmarks.federation import FederatedResult, bench_config, data_scope, federate, reached

CODECS = ("fp32", "fp16", "int8", "topk:0.1+int8", "topk:0.01+int8")


def run(
    executor: Executor,
    *,
    data_dir: str | None,
    clients: int,
    rounds: int,
    train_limit: int | None,
    eval_limit: int | None,
    target: float,
) -> list[str]:
    """Every codec for `rounds` rounds without DP (so the codec is the only difference); the table."""
    results: dict[str, FederatedResult] = {}
    for codec in CODECS:
        config = bench_config(
            clients=clients,
            rounds=rounds,
            train_limit=train_limit,
            eval_limit=eval_limit,
            epsilon=None,
            compression=codec,
        )
        results[codec] = federate(config, executor, data_dir=data_dir)
    fp32 = _bytes_per_update(results["fp32"])
    samples, tests = data_scope(train_limit, eval_limit)
    lines = [
        f"`mnist_dp_cnn` (26,010 parameters), {clients} clients sharing {samples} MNIST training samples (IID), "
        f"{rounds} rounds of one local epoch (batch 128, lr 0.5, momentum 0.5) without DP, so that the codec is "
        f"the only difference; test accuracy on {tests} test samples. Top-k codecs send the k largest entries "
        "(int8-quantized) and keep the rest in each client's error-feedback residual for its next round.",
        "",
        f"| codec | bytes per update | ratio vs fp32 | final accuracy | rounds to {target:.0%} "
        f"| time to {target:.0%} |",
        "|---|---|---|---|---|---|",
    ]
    for codec, result in results.items():
        size = _bytes_per_update(result)
        hit = reached(result.rows, target)
        final = f"{result.rows[-1].accuracy:.2%}" if result.rows else "-"
        to_rounds = str(hit.round) if hit else f"not in {len(result.rows)}"
        to_time = f"{hit.elapsed_s:.1f} s" if hit else "-"
        ratio = fp32 / size if size else 0.0
        lines.append(f"| {codec} | {size:,.0f} | {ratio:.1f}x | {final} | {to_rounds} | {to_time} |")
    return lines


def _bytes_per_update(result: FederatedResult) -> float:
    """Mean bytes on the wire per accepted update over the run."""
    updates = sum(row.updates for row in result.rows)
    return sum(row.bytes_sent for row in result.rows) / updates if updates else 0.0
