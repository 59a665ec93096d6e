"""The per-service RabbitMQ users of ops/rabbitmq/definitions.json, applied to the real broker: a client
can declare, bind and read its own queue and nothing else, and cannot publish events."""

from __future__ import annotations

import asyncio
import json
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote, unquote

import aio_pika
import aio_pika.abc
import aiormq.exceptions
import pytest

from broker.rabbitmq import RabbitBroker
from broker.topology import client_queue, queue_key
from contracts.envelope import Envelope
from contracts.events import RoundStarted
from tests.support.rabbitmq import fresh_vhost

DEFINITIONS = Path(__file__).resolve().parents[2] / "ops" / "rabbitmq" / "definitions.json"
pytestmark = pytest.mark.integration


def _ctl(*args: str) -> None:
    subprocess.run(["rabbitmqctl", *args], check=True, capture_output=True, timeout=60)


@pytest.fixture
def users() -> Iterator[dict[str, str]]:
    """AMQP URLs of `coordinator` and `client` on a fresh vhost, with the definitions' permissions."""
    permissions = {p["user"]: p for p in json.loads(DEFINITIONS.read_text())["permissions"]}
    with fresh_vhost("fedbus-perms") as guest_url:
        vhost = guest_url.rsplit("/", 1)[1]
        names = {role: f"fedbus-test-{role}-{uuid.uuid4().hex[:6]}" for role in ("coordinator", "client")}
        try:
            for role, name in names.items():
                _ctl("add_user", name, "test-password")
                grant = permissions[role]
                _ctl(
                    "set_permissions",
                    "-p",
                    vhost.replace("%2F", "/"),
                    name,
                    grant["configure"],
                    grant["write"],
                    grant["read"],
                )
            yield {role: f"amqp://{name}:test-password@127.0.0.1:5672/{vhost}" for role, name in names.items()}
        finally:
            for name in names.values():
                subprocess.run(["rabbitmqctl", "delete_user", name], capture_output=True, timeout=60)


async def _refused(url: str, action: str) -> bool:
    connection = await aio_pika.connect(url)
    try:
        channel = await connection.channel(publisher_confirms=True)
        if action == "consume":
            queue = await channel.get_queue("fedbus.aggregator", ensure=False)

            async def ignore(message: aio_pika.abc.AbstractIncomingMessage) -> None:
                return None

            await queue.consume(ignore)
        elif action == "read-inspect":
            queue = await channel.get_queue("fedbus.inspect", ensure=False)
            await queue.get(fail=False)
        elif action == "publish":
            exchange = await channel.get_exchange("fedbus.events", ensure=False)
            await exchange.publish(aio_pika.Message(b"x"), routing_key="round.quorum_reached", timeout=10)
        elif action == "declare-other":
            await channel.declare_queue("fedbus.aggregator-evil", durable=True)
        return False
    except aiormq.exceptions.ChannelAccessRefused:
        return True
    finally:
        await connection.close()


async def publish_round_started(coordinator: RabbitBroker, client_id: str, received: list[Envelope]) -> RoundStarted:
    """Publish a RoundStarted selecting `client_id` and wait (a bounded while) for `received` to fill."""
    started = RoundStarted(
        run_id="r", round=1, attempt=1, model_version=0, model_digest="d", selected=(client_id,), deadline=0.0,
        train={},
    )  # fmt: skip
    await coordinator.publish(Envelope(event=started))
    for _ in range(200):
        if received:
            break
        await asyncio.sleep(0.05)
    return started


def test_a_client_user_reads_only_its_own_queue_and_publishes_nothing(users: dict[str, str]) -> None:
    async def scenario() -> None:
        coordinator = await RabbitBroker.connect(users["coordinator"])  # declares the shared topology
        client = await RabbitBroker.connect(users["client"], declare_topology=False)
        received: list[Envelope] = []
        try:
            queue = await client.ensure_client_queue("c-perm")

            async def handle(envelope: Envelope) -> None:
                received.append(envelope)

            await client.consume(queue, handle)
            started = await publish_round_started(coordinator, "c-perm", received)
        finally:
            await client.close()
            await coordinator.close()
        assert [e.event for e in received] == [started]
        for action in ("consume", "read-inspect", "publish", "declare-other"):
            assert await _refused(users["client"], action), f"a client user could {action}"

    asyncio.run(scenario())


def test_the_definitions_quote_vhost_names_we_use() -> None:
    definitions = json.loads(DEFINITIONS.read_text())
    assert quote(definitions["vhosts"][0]["name"]) == "fedbus"
    assert {u["name"] for u in definitions["users"]} >= {"coordinator", "aggregator", "client", "api"}
    assert "guest" not in {u["name"] for u in definitions["users"]}


def test_a_client_cannot_reach_another_clients_queue_by_its_id(users: dict[str, str]) -> None:
    """Clients share one broker user; a queue named after a secret only its client knows is out of the others'
    reach: deleting or consuming the queue named after the victim's (public) client id finds nothing."""

    async def scenario() -> tuple[list[Envelope], bool]:
        coordinator = await RabbitBroker.connect(users["coordinator"])
        victim = await RabbitBroker.connect(users["client"], declare_topology=False)
        received: list[Envelope] = []
        try:
            queue = await victim.ensure_client_queue("c-victim", queue_key("the victim's client secret"))

            async def handle(envelope: Envelope) -> None:
                received.append(envelope)

            attacker = await aio_pika.connect(users["client"])
            try:
                channel = await attacker.channel()
                await channel.queue_delete("fedbus.client.c-victim")  # what it can guess: the id is public
                channel = await attacker.channel()
                try:
                    await channel.declare_queue("fedbus.client.c-victim", passive=True)
                    found = True
                except aiormq.exceptions.ChannelNotFoundEntity:
                    found = False
            finally:
                await attacker.close()
            await victim.consume(queue, handle)
            await publish_round_started(coordinator, "c-victim", received)
            return received, found
        finally:
            await victim.close()
            await coordinator.close()

    received, found = asyncio.run(scenario())

    assert not found, "the victim's queue is reachable by its client id"
    assert len(received) == 1, "the victim's queue lost its events"


def test_the_definitions_expire_client_queues_nobody_consumes_and_no_other_queue() -> None:
    """A client queue outlives its client only for a day (a re-created container is a new identity with a new
    queue; the old one would otherwise stay forever). Applied by the real broker to a real client queue."""
    (policy,) = json.loads(DEFINITIONS.read_text())["policies"]
    assert policy["definition"] == {"expires": 86_400_000} and policy["apply-to"] == "queues"

    async def declare(url: str) -> None:
        broker = await RabbitBroker.connect(url)
        try:
            await broker.ensure_client_queue("c-policy", queue_key("secret"))
        finally:
            await broker.close()

    with fresh_vhost("fedbus-policy") as url:
        vhost = unquote(url.rsplit("/", 1)[1])
        _ctl("set_policy", "-p", vhost, "--apply-to", "queues", policy["name"], policy["pattern"],
             json.dumps(policy["definition"]))  # fmt: skip
        asyncio.run(declare(url))
        listing = subprocess.run(
            ["rabbitmqctl", "-q", "list_queues", "--no-table-headers", "-p", vhost, "name", "policy"],
            check=True, capture_output=True, text=True, timeout=60,
        ).stdout  # fmt: skip
    policies = dict(line.split("\t") for line in listing.splitlines() if "\t" in line)
    client = client_queue("c-policy", queue_key("secret")).name
    assert policies[client] == policy["name"]
    assert all(not value for name, value in policies.items() if name != client), policies  # fixed queues: none
