"""What the traces of a federated run must look like, checked alike for `fedbus run` and `fedbus up`."""

from __future__ import annotations

from collections import defaultdict

from tests.support.otlp_receiver import ReceivedSpan

# A round's spans, from its three roles: the coordinator (round N, validate and accept update), the clients
# (client round ... upload) and the aggregator (aggregate, evaluate).
ROUND_SPANS = frozenset(
    {
        "client round",
        "download model",
        "train",
        "compress",
        "upload",
        "validate and accept update",
        "aggregate",
        "evaluate",
    }
)
# Beyond the rounds' own, a run starts a few traces (each registration, the run's creation and its first
# model): a few dozen in all. Polling the database must start none: before, it started thousands.
MAX_TRACES_PER_ROUND = 20


def traces_of_rounds(spans: list[ReceivedSpan]) -> dict[int, set[str]]:
    """round -> the ids of the traces holding a span of that round (the spans carrying `fedbus.round`)."""
    rounds: dict[int, set[str]] = defaultdict(set)
    for span in spans:
        if isinstance(round_ := span.attributes.get("fedbus.round"), int):
            rounds[round_].add(span.trace_id)
    return dict(rounds)


def check_round_traces(spans: list[ReceivedSpan], rounds: int) -> dict[int, list[ReceivedSpan]]:
    """Each round is one trace holding every role's spans, and the run made few traces besides; returns each
    round's spans."""
    trace_ids = {span.trace_id for span in spans}
    assert len(trace_ids) <= MAX_TRACES_PER_ROUND * rounds, f"{len(trace_ids)} traces for {rounds} rounds"
    by_round = traces_of_rounds(spans)
    assert sorted(by_round) == list(range(1, rounds + 1)), f"rounds traced: {sorted(by_round)}"
    held: dict[int, list[ReceivedSpan]] = {}
    for round_, ids in sorted(by_round.items()):
        assert len(ids) == 1, f"round {round_}: its spans are in {len(ids)} traces"
        held[round_] = [span for span in spans if span.trace_id in ids]
        names = {span.name for span in held[round_]}
        assert {f"round {round_}", *ROUND_SPANS} <= names, f"round {round_}: {sorted(names)}"
        clients = {span.attributes["fedbus.client_id"] for span in held[round_] if span.name == "client round"}
        assert len(clients) >= 2, f"round {round_}: client spans from {clients}"
    return held
