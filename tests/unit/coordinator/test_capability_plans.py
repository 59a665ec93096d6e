"""Capability-aware plans: what a client's updates measure, the plan computed from it by hand, the decider
putting the plans in RoundStarted, and the client training and sending what its plan says."""

from __future__ import annotations

import asyncio
import dataclasses
import math

import pytest

from contracts.capability import STEPS, TRAIN_S, UPLINK, Capability, ClientPlan, estimated_wire_bytes, measured
from contracts.config import PrivacyConfig, RoundConfig, RunConfig
from contracts.envelope import Envelope
from contracts.errors import CodecError, ConfigError
from contracts.events import ModelInitialized, RoundStarted, RunCreated, UpdateAccepted
from contracts.run_state import state_from_created
from services.coordinator import decide
from services.coordinator.decide import ClientPool
from services.coordinator.plans import UNMEASURED, plan_clients
from tests.unit.workers.test_client_worker import round_started, worker

LADDER = ("fp16", "int8", "topk:0.1+int8")


def config(**plans: object) -> RunConfig:
    return RunConfig.from_dict(
        {
            "clients": 3,
            "compression": "int8",
            "privacy": {"enabled": False},
            "round": {"local_epochs": 1, "batch_size": 100, "timeout_s": 100.0},
            "plans": {"adaptive": True, "codecs": list(LADDER)} | plans,
        }
    )


def capability(step_s: float, uplink: float | None) -> Capability:
    return Capability(
        step_s=step_s, uplink_bytes_per_s=uplink, num_samples=1000, raw_bytes=400_000, codec="int8", wire_bytes=100_000
    )


def test_a_client_is_measured_from_its_updates_and_smoothed() -> None:
    sizes = {"num_samples": 1000, "raw_bytes": 400_000, "codec": "int8", "wire_bytes": 100_000}
    first = measured(None, {TRAIN_S: 2.0, STEPS: 10.0, "loss": 0.3}, **sizes)
    assert first == capability(0.2, None)
    second = measured(first, {TRAIN_S: 4.0, STEPS: 10.0, UPLINK: 1e6}, **sizes)
    assert second is not None and second.step_s == pytest.approx(0.3) and second.uplink_bytes_per_s == 1e6
    third = measured(second, {TRAIN_S: 3.0, STEPS: 10.0, UPLINK: 3e6}, **sizes)
    assert third is not None and third.uplink_bytes_per_s == pytest.approx(2e6)
    # No measurement (an older client, nonsense values): what was known stays.
    assert measured(third, {"loss": 1.0}, **sizes) is third
    assert measured(third, {TRAIN_S: math.inf, STEPS: 10.0}, **sizes) is third
    assert measured(None, {TRAIN_S: 1.0, STEPS: 0.0}, **sizes) is None


def test_wire_sizes_scale_the_last_update_by_the_codecs_nominal_sizes() -> None:
    known = capability(0.01, 1e6)  # its last update: 100 kB as int8 (a quarter of fp32's 400 kB, before zstd)
    assert estimated_wire_bytes(known, "int8") == pytest.approx(100_000)
    assert estimated_wire_bytes(known, "fp16") == pytest.approx(200_000)
    assert estimated_wire_bytes(known, "topk:0.1+int8") == pytest.approx(100_000 * (0.1 * 5 / 4) / 0.25)
    unrecorded = dataclasses.replace(known, codec="")  # an update logged before codecs were recorded
    assert estimated_wire_bytes(unrecorded, "fp16") == pytest.approx(200_000)


def test_plans_computed_by_hand() -> None:
    # A: 10 steps x 10 ms + 100 kB at 1 MB/s = 0.2 s; B: 10 x 40 ms + 100 kB at 100 kB/s = 1.4 s; the median
    # target 0.8 s. A's fp16 upload (200 kB, 0.2 s) fits half of it, and all 10 steps fit the rest. B's every
    # codec takes more than 0.4 s: the smallest, top-k 10% + int8 (50 kB, 0.5 s), leaves 0.3 s, 7 steps of 40 ms.
    plans = plan_clients(config(), ("a", "b", "c"), {"a": capability(0.01, 1e6), "b": capability(0.04, 1e5)})

    assert (plans["a"].max_steps, plans["a"].compression) == (None, "fp16")
    assert (plans["b"].max_steps, plans["b"].compression) == (7, "topk:0.1+int8")
    assert plans["b"].why == (
        "40 ms/step, 7 of 10 steps, topk:0.1+int8 (upload 0.50 s at 0.80 Mbit/s) for the median target 0.80 s"
    )
    assert plans["c"] == ClientPlan(max_steps=None, compression="int8", why=UNMEASURED)


def test_a_plan_keeps_at_least_min_work_and_the_target_stays_inside_the_deadline() -> None:
    slow = {"s": capability(1.0, None)}  # 10 s of training, uplink not measured: the run's codec order, no upload
    plans = plan_clients(config(target_s=2.0, min_work=0.5), ("s",), slow)
    assert (plans["s"].max_steps, plans["s"].compression) == (5, "fp16")  # 2 steps fit, min_work keeps 5
    capped = plan_clients(config(target_s=1000.0), ("s",), slow)
    assert "target 80.00 s" in capped["s"].why and capped["s"].max_steps is None  # 0.8 x the 100 s deadline


def test_the_decider_plans_the_next_round_from_what_the_clients_measured() -> None:
    run_config = config(target_s=0.8)
    run = state_from_created(RunCreated(run_id="r", config=run_config.to_dict()))
    run.apply(ModelInitialized(run_id="r", model_version=0, model_digest="m0", num_parameters=1), 0.0)
    pool = ClientPool(active=frozenset({"a", "b"}))
    first = decide.due(run, pool, 1.0)
    assert isinstance(first[0], RoundStarted)
    assert {c: p["why"] for c, p in first[0].plans.items()} == {"a": UNMEASURED, "b": UNMEASURED}
    for event in first:
        run.apply(event, 1.0)
    for client, train_s, uplink in (("a", 0.1, 1e6), ("b", 0.4, 1e5)):
        accepted = UpdateAccepted(
            run_id="r", round=1, update_id=f"u-{client}", client_id=client, num_samples=1000, digest="d" * 64,
            wire_bytes=100_000, raw_bytes=400_000, ratio=4.0, epsilon=None, codec="int8",
            metrics={TRAIN_S: train_s, STEPS: 10.0, UPLINK: uplink}, late=client == "b",
        )  # fmt: skip
        run.apply(accepted, 2.0)
    # The late update measured "b" too.
    assert run.capabilities["b"] == capability(0.04, 1e5)

    retried = decide.resume(run, pool, 3.0, since=3.0)

    started = next(e for e in retried if isinstance(e, RoundStarted))
    assert ClientPlan.from_dict("b", started.plans["b"]).max_steps == 7
    assert started.plans["a"]["compression"] == "fp16"


def test_plan_options_are_checked_where_the_config_is_read() -> None:
    for options, field in (
        ({"codecs": ["fp16", "zip"]}, "plans.codecs"),
        ({"codecs": "fp16"}, "plans.codecs"),
        ({"target_s": -1.0}, "plans.target_s"),
        ({"min_work": 0.0}, "plans.min_work"),
        ({"upload_share": 2}, "plans.upload_share"),
        ({"adaptive": "yes"}, "plans.adaptive"),
        ({"deadline": 3}, "plans.deadline"),
    ):
        with pytest.raises(ConfigError) as error:
            config(**options)
        assert error.value.field == field
    assert RunConfig.from_dict(config().to_dict()) == config()  # the dict form (RunCreated) reads back


def test_a_malformed_plan_is_a_codec_error_naming_the_field() -> None:
    for data, named in (
        ({"max_steps": 0, "compression": "int8", "why": ""}, "plans.c-1.max_steps"),
        ({"max_steps": None, "compression": "zip", "why": ""}, "plans.c-1.compression"),
        ({"max_steps": None, "compression": "int8"}, "plans.c-1"),
        ([], "plans.c-1"),
    ):
        with pytest.raises(CodecError, match=f"^{named}"):
            ClientPlan.from_dict("c-1", data)


def _with_plans(envelope: Envelope, plans: dict[str, object]) -> Envelope:
    assert isinstance(envelope.event, RoundStarted)
    return Envelope(event=dataclasses.replace(envelope.event, plans=plans))


def test_a_client_trains_its_planned_steps_sends_its_planned_codec_and_reports_what_it_cost() -> None:
    client, transport, trainer = worker()
    plan = {"max_steps": 3, "compression": "topk:0.1+int8", "why": "slow"}

    async def two_rounds() -> None:
        await client.handle(_with_plans(round_started(1), {"c-1": plan}))
        await client.handle(round_started(2))  # no plan for it: the run's

    asyncio.run(two_rounds())

    assert [call.max_steps for call in trainer.calls] == [3, None]
    assert [header.codec for header in transport.uploads] == ["topk:0.1+int8", "int8"]
    first, second = (header.metrics for header in transport.uploads)
    assert first[STEPS] == 100.0 and first[TRAIN_S] >= 0 and UPLINK not in first  # no upload measured yet
    assert second[UPLINK] > 0


def test_a_malformed_plan_for_this_client_is_refused_like_a_malformed_round() -> None:
    client, transport, _ = worker()
    malformed = {"c-1": {"max_steps": -2, "compression": "int8", "why": ""}}
    with pytest.raises(CodecError, match=r"plans\.c-1\.max_steps"):
        asyncio.run(client.handle(_with_plans(round_started(1), malformed)))
    assert transport.uploads == []
    # Another client's plan is not this client's business.
    asyncio.run(client.handle(_with_plans(round_started(1), {"c-9": "garbage"})))
    assert len(transport.uploads) == 1


def test_plans_stay_off_unless_asked() -> None:
    run_config = RunConfig(clients=2, privacy=PrivacyConfig(enabled=False), round=RoundConfig(timeout_s=10.0))
    run = state_from_created(RunCreated(run_id="r", config=run_config.to_dict()))
    run.apply(ModelInitialized(run_id="r", model_version=0, model_digest="m0", num_parameters=1), 0.0)
    started = decide.due(run, ClientPool(active=frozenset({"a", "b"})), 1.0)[0]
    assert isinstance(started, RoundStarted) and started.plans == {}
