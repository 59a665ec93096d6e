"""The heterogeneity benchmark's ceilings: what FedBuff and the plans could gain over quorum 0.8 on given devices."""

from __future__ import annotations

import pytest

from benchmarks.heterogeneity import ceilings
from benchmarks.latency import Device


def devices(*seconds: float, uplink: float = 1e12) -> list[Device]:
    return [Device(compute_s=s, uplink_bytes_per_s=uplink, straggler=s > 3) for s in seconds]


def test_fedbuff_gains_the_waiting_and_the_dropped_work_and_the_plans_bring_the_round_to_the_median() -> None:
    # quorum 0.8 of 5: 4 updates a round, each round the 4th fastest client's 4 s: 1 update/s. Back to back,
    # the five give 1 + 1/2 + 1/3 + 1/4 + 1/10 updates/s; the plans bring the round from 4 s to the median's 3 s.
    fedbuff, plans = ceilings(devices(1.0, 2.0, 3.0, 4.0, 10.0), update_bytes=0.0)

    assert fedbuff == pytest.approx(1 + 1 / 2 + 1 / 3 + 1 / 4 + 1 / 10)
    assert plans == pytest.approx(4 / 3)


def test_equal_devices_leave_nothing_to_gain_but_the_dropped_fifth() -> None:
    fedbuff, plans = ceilings(devices(2.0, 2.0, 2.0, 2.0, 2.0), update_bytes=0.0)

    assert fedbuff == pytest.approx(5 / 4) and plans == pytest.approx(1.0)


def test_the_upload_counts_in_each_clients_time() -> None:
    # 1,000 bytes at 1,000 B/s: every client's time is its device time plus 1 s.
    fedbuff, plans = ceilings(devices(1.0, 2.0, 3.0, 4.0, 10.0, uplink=1000.0), update_bytes=1000.0)

    assert plans == pytest.approx(5 / 4)
    assert fedbuff == pytest.approx((1 / 2 + 1 / 3 + 1 / 4 + 1 / 5 + 1 / 11) / (4 / 5))
