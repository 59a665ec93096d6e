"""Three sites on three hosts: each client in a network namespace of its own, with its own data folder, its
own identity and its own mTLS certificate, reaching the server side (coordinator, RabbitMQ, PostgreSQL)
over its own link only. One site loses its network for a round; the run goes on without it and takes it
back once its link returns.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import numpy as np
import pytest

from contracts.events import (
    ClientRegistered,
    Event,
    QuorumReached,
    RoundAggregated,
    RunCompleted,
    UpdateAccepted,
)
from persistence.sql_event_log import SqlEventLog
from tests.deployed.world import Deployment, of_type
from tests.faults.proxy_thread import ProxyThread
from tests.support.certificates import make_site_pki
from tests.support.netns import Sites, sites
from tests.support.processes import FedbusProcess, free_port

pytestmark = [pytest.mark.integration, pytest.mark.deployed, pytest.mark.timeout(600)]
SITES, ROUNDS, TRAIN, TEST = 3, 4, 600, 200
CUT = 2  # the site whose link goes down


def _idx(path: Path, header: int) -> np.ndarray:
    return np.frombuffer(path.read_bytes(), dtype=np.uint8, offset=header)


def write_site_data(data_dir: str, root: Path) -> list[Path]:
    """Each site's own train.npz and test.npz: disjoint slices of MNIST's training split, as uint8 images."""
    raw = Path(data_dir) / "MNIST" / "raw"
    images = _idx(raw / "train-images-idx3-ubyte", 16).reshape(-1, 28, 28)
    labels = _idx(raw / "train-labels-idx1-ubyte", 8).astype(np.int64)
    folders = []
    for i in range(SITES):
        start = i * (TRAIN + TEST)
        folder = root / f"site-{i}"
        folder.mkdir(parents=True)
        np.savez(folder / "train.npz", x=images[start : start + TRAIN], y=labels[start : start + TRAIN])
        np.savez(folder / "test.npz", x=images[start + TRAIN : start + TRAIN + TEST], y=labels[start + TRAIN :][:TEST])
        folders.append(folder)
    return folders


def _via(url: str, host: str, port: int) -> str:
    """`url` with its host and port replaced (the credentials and vhost kept)."""
    parts = urlsplit(url)
    credentials = parts.netloc.rpartition("@")[0]
    return urlunsplit(parts._replace(netloc=f"{credentials}@{host}:{port}" if credentials else f"{host}:{port}"))


def start_site(deployment: Deployment, hosts: Sites, i: int, env: dict[str, str], folder: Path) -> FedbusProcess:
    """`fedbus client --data FOLDER` inside site i's namespace, in the deployment's fleet (killed after)."""
    return deployment.fleet.start(
        f"site-{i}", "client", prefix=hosts.exec_prefix(i), args=["--data", str(folder)], **env
    )


async def _follow_and_cut(deployment: Deployment, hosts: Sites) -> list[Event]:
    """Cut site CUT off once round 1 has its quorum (before round 2 can reach it), restore it once round 2
    is aggregated, and return the run's events when it completed."""
    async with deployment.run_log() as log:
        await log.until(lambda es: bool(of_type(es, QuorumReached)), what="round 1's quorum", within=300)
        hosts.cut(CUT)
        await log.until(
            lambda es: any(e.round == 2 for e in of_type(es, RoundAggregated)), what="round 2 aggregated", within=300
        )
        hosts.restore(CUT)
        return await log.until(lambda es: bool(of_type(es, RunCompleted)), what="RunCompleted", within=300)


async def _registrations(database_url: str) -> list[ClientRegistered]:
    log = await SqlEventLog.connect(database_url, create=False)
    try:
        return [e for r in await log.read_all() if isinstance(e := r.envelope.event, ClientRegistered)]
    finally:
        await log.close()


def test_three_sites_in_their_own_namespaces_finish_a_run_through_one_sites_network_cut(
    deployment: Deployment, data_dir: str, tmp_path: Path
) -> None:
    with sites(SITES) as hosts:
        server_ips = [hosts.server_ip(i) for i in range(SITES)]
        pki = make_site_pki(tmp_path / "pki", server_ips, [f"site-{i}" for i in range(SITES)])
        folders = write_site_data(data_dir, tmp_path / "sites")
        amqp = urlsplit(deployment.amqp_url)
        grpc_port = free_port()
        # The host's RabbitMQ listens on loopback only: each site reaches it through a proxy on its link's
        # server-side address, as through a load balancer in front of the broker.
        relays = [ProxyThread(amqp.hostname or "127.0.0.1", amqp.port or 5672, listen_host=ip) for ip in server_ips]
        relay_ports = [relay.start() for relay in relays]
        try:
            deployment.write_config(
                clients=SITES, rounds=ROUNDS, round={"quorum": 0.6, "grace_s": 15.0, "timeout_s": 120.0}
            )
            deployment.fleet.env.update(FEDBUS_GRPC_BIND=f"0.0.0.0:{grpc_port}")
            coordinator = deployment.fleet.start(
                "coordinator",
                "coordinator",
                FEDBUS_TLS_CERT=str(pki.server_cert),
                FEDBUS_TLS_KEY=str(pki.server_key),
                FEDBUS_TLS_CLIENT_CA=str(pki.ca),  # mTLS: a site without a certificate of this CA gets nowhere
            )
            deployment.wait_for_output(coordinator, "coordinator serving gRPC")
            deployment.start_aggregator("aggregator")
            for i in range(SITES):
                cert, key = pki.sites[f"site-{i}"]
                site_env = {
                    "FEDBUS_GRPC_ADDRESS": f"{hosts.server_ip(i)}:{grpc_port}",
                    "FEDBUS_AMQP_URL": _via(deployment.amqp_url, hosts.server_ip(i), relay_ports[i]),
                    "FEDBUS_TLS_CA": str(pki.ca),
                    "FEDBUS_TLS_CLIENT_CERT": str(cert),
                    "FEDBUS_TLS_CLIENT_KEY": str(key),
                    "FEDBUS_INSTANCE_NAME": f"site-{i}",
                    "FEDBUS_STATE_DIR": str(tmp_path / f"state-{i}"),  # each host keeps its own identity
                }
                start_site(deployment, hosts, i, site_env, folders[i])

            events = asyncio.run(_follow_and_cut(deployment, hosts))
            registered = asyncio.run(_registrations(deployment.database_url))
            survivors = [p.name for p in deployment.fleet if p.returncode is not None]
        finally:
            for relay in relays:
                relay.stop()

    by_instance = {e.capabilities["instance_name"]: e.client_id for e in registered}
    assert sorted(by_instance) == [f"site-{i}" for i in range(SITES)] and len(set(by_instance.values())) == SITES
    assert all(e.capabilities["own_data"] for e in registered)
    done = of_type(events, RunCompleted)
    assert len(done) == 1 and done[0].reason == "max_rounds"
    assert [e.round for e in of_type(events, RoundAggregated)] == list(range(1, ROUNDS + 1))
    on_time = [e for e in of_type(events, UpdateAccepted) if not e.late]
    contributors = {r: {e.client_id for e in on_time if e.round == r} for r in range(1, ROUNDS + 1)}
    cut, healthy = by_instance[f"site-{CUT}"], {by_instance[f"site-{i}"] for i in range(SITES) if i != CUT}
    assert contributors[1] == healthy | {cut}
    assert contributors[2] == healthy  # site CUT had no network for the whole of round 2
    assert any(cut in contributors[r] for r in range(3, ROUNDS + 1)), contributors  # and came back
    assert all(e.num_samples == TRAIN for e in on_time)  # each site reports its own data
    assert not survivors, f"exited: {survivors}"
