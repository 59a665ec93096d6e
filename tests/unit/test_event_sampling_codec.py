"""RoundStarted and QuorumReached record how the cohort was drawn; the field round-trips through the codec,
and events written before it decode with it empty."""

from __future__ import annotations

import dataclasses

import msgpack
import pytest

from contracts.envelope import Envelope
from contracts.errors import CodecError
from contracts.event_codec import decode_envelope, encode_envelope, event_to_dict
from contracts.events import Event, QuorumReached, RoundStarted

STARTED = RoundStarted(
    run_id="r", round=2, attempt=1, model_version=1, model_digest="m1", selected=("c1", "c4"), deadline=10.0,
    train={"epochs": 1},
)  # fmt: skip
QUORUM = QuorumReached(run_id="r", round=2, model_version=1, update_ids=("u1",), partial=True)
POISSON = {"kind": "poisson", "rate": 0.05, "population": 400}


@pytest.mark.parametrize("event", [STARTED, QUORUM])
@pytest.mark.parametrize("sampling", [{}, POISSON, {"kind": "fixed", "fraction": 0.5, "population": 10}])
def test_the_sampling_round_trips(event: Event, sampling: dict[str, object]) -> None:
    sent = Envelope(event=dataclasses.replace(event, sampling=sampling))

    received = decode_envelope(encode_envelope(sent))

    assert received == sent
    assert received.event.sampling == sampling  # type: ignore[union-attr]


@pytest.mark.parametrize("event", [STARTED, QUORUM])
def test_an_event_written_before_the_sampling_field_decodes_with_it_empty(event: Event) -> None:
    payload = event_to_dict(event)
    del payload["sampling"]
    body = {"type": type(event).__name__, "event_id": "e1", "occurred_at": 1.0, "schema_version": 1, "payload": payload}

    decoded = decode_envelope(msgpack.packb(body, use_bin_type=True))

    assert decoded.event == event and decoded.event.sampling == {}  # type: ignore[union-attr]


def test_a_sampling_that_is_not_a_map_is_refused() -> None:
    payload = {**event_to_dict(STARTED), "sampling": ["poisson", 0.1]}
    body = {"type": "RoundStarted", "event_id": "e1", "occurred_at": 1.0, "payload": payload}

    with pytest.raises(CodecError, match=r"RoundStarted\.sampling"):
        decode_envelope(msgpack.packb(body, use_bin_type=True))
