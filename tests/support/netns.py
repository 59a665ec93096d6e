"""Hosts on one machine: a network namespace per site, joined to this one by a veth pair of its own.

Site i lives in namespace ``<prefix>-<i>`` with address ``10.<net>.<i>.2`` on its end of the pair; this
machine (the server side: coordinator, broker, database) is ``10.<net>.<i>.1`` on the other end. A site
reaches nothing but the server side: no route, no bridge, no forwarding between sites. `cut` and `restore`
take a site's link down and up (a network failure, not a process failure). Everything is removed on exit,
also after a failed test; names carry a random suffix, so concurrent runs do not meet.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass, field

import pytest


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, text=True, timeout=30)


def require_netns() -> None:
    """Skip (fail under FEDBUS_REQUIRE_SERVICES=1) unless this process may create namespaces."""
    reason = None
    if shutil.which("ip") is None:
        reason = "iproute2 (`ip`) is not installed"
    elif os.geteuid() != 0:
        reason = "network namespaces need root"
    if reason is not None:
        if os.environ.get("FEDBUS_REQUIRE_SERVICES") == "1":
            pytest.fail(f"required (FEDBUS_REQUIRE_SERVICES=1): {reason}")
        pytest.skip(reason)


@dataclass(slots=True)
class Sites:
    """`count` sites; `server_ip(i)` is how site i reaches the server side, `exec_prefix(i)` runs in it."""

    count: int
    prefix: str = field(default_factory=lambda: f"fb{secrets.token_hex(2)}")
    net: int = field(default_factory=lambda: 100 + secrets.randbelow(150))

    def namespace(self, i: int) -> str:
        return f"{self.prefix}-{i}"

    def server_ip(self, i: int) -> str:
        return f"10.{self.net}.{i}.1"

    def site_ip(self, i: int) -> str:
        return f"10.{self.net}.{i}.2"

    def exec_prefix(self, i: int) -> list[str]:
        return ["ip", "netns", "exec", self.namespace(i)]

    def _links(self, i: int) -> tuple[str, str]:
        return f"{self.prefix}h{i}", f"{self.prefix}s{i}"  # at most 15 characters, as Linux wants

    def create(self) -> None:
        for i in range(self.count):
            ns, (host, site) = self.namespace(i), self._links(i)
            _ip("netns", "add", ns)
            _ip("link", "add", host, "type", "veth", "peer", "name", site)
            _ip("link", "set", site, "netns", ns)
            _ip("addr", "add", f"{self.server_ip(i)}/24", "dev", host)
            _ip("link", "set", host, "up")
            _ip("-n", ns, "addr", "add", f"{self.site_ip(i)}/24", "dev", site)
            _ip("-n", ns, "link", "set", site, "up")
            _ip("-n", ns, "link", "set", "lo", "up")

    def cut(self, i: int) -> None:
        """Site i loses its network: its link goes down (connections stall; nothing is closed)."""
        _ip("link", "set", self._links(i)[0], "down")

    def restore(self, i: int) -> None:
        _ip("link", "set", self._links(i)[0], "up")

    def remove(self) -> None:
        for i in range(self.count):
            with contextlib.suppress(subprocess.CalledProcessError):
                _ip("link", "del", self._links(i)[0])  # takes its peer with it
            with contextlib.suppress(subprocess.CalledProcessError):
                _ip("netns", "del", self.namespace(i))


@contextlib.contextmanager
def sites(count: int) -> Iterator[Sites]:
    require_netns()
    made = Sites(count)
    try:
        made.create()
        yield made
    finally:
        made.remove()
