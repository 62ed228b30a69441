"""Simulated hosts on one machine: each a network, mount and UTS namespace of its own, joined to the
test's services by a veth pair on a private bridge. A process in one sees its own hostname, a
private /tmp (tmpfs) with its HOME inside, no loopback (the interface stays down, so a 127.0.0.1 URL
fails at once) and only the bridge's address, where the test binds its Redis, moto and a proxy to
Postgres. Only namespaces and links this module creates are touched, and `Network.close` removes
them, also after a failure. Needs root and iproute2's `ip` and util-linux's `unshare`.
"""

from __future__ import annotations

import ipaddress
import os
import random
import shutil
import subprocess
import sys
import uuid
from dataclasses import dataclass, field
from pathlib import Path


def unavailable() -> str | None:
    """Why simulated hosts cannot be made here, or None."""
    if os.geteuid() != 0:
        return "namespaces and veth pairs need root"
    missing = [tool for tool in ("ip", "unshare") if shutil.which(tool) is None]
    if missing:
        return f"{' and '.join(missing)} not installed (iproute2, util-linux)"
    probe = subprocess.run(["unshare", "--net", "--mount", "--uts", "true"], capture_output=True, text=True)
    if probe.returncode:
        return f"unshare --net --mount --uts is refused here: {probe.stderr.strip()}"
    return None


def _ip(*args: str) -> None:
    done = subprocess.run(["ip", *args], capture_output=True, text=True)
    if done.returncode:
        raise RuntimeError(f"ip {' '.join(args)}: {done.stderr.strip()}")


def _free_subnet() -> ipaddress.IPv4Network:
    """A /24 in 10.0.0.0/8 that no interface of this machine is on."""
    used = subprocess.run(["ip", "-4", "-o", "addr"], capture_output=True, text=True, check=True).stdout
    taken = [
        ipaddress.ip_interface(w).network for line in used.splitlines() for w in line.split() if "/" in w
    ]
    for _ in range(100):
        net = ipaddress.ip_network(f"10.{random.randint(100, 250)}.{random.randint(0, 255)}.0/24")
        if not any(net.overlaps(t) for t in taken):
            return net
    raise RuntimeError("no free 10.x.y.0/24 subnet")


_REPO = str(Path(__file__).resolve().parents[2])


@dataclass
class Host:
    name: str  # also its hostname
    netns: str
    address: str

    def argv(self, command: list[str], home: str = "/tmp/home") -> list[str]:
        """`command` run inside this host: its namespaces, hostname, a fresh tmpfs on /tmp, $HOME in it.
        The code it runs (this checkout and its Python) stays visible even when it lives under /tmp, as
        a clone in a temporary folder does: each such folder is bound aside, /tmp is replaced, and the
        folder is bound back; nothing else of the machine's /tmp is."""
        keep = sorted({p for p in (_REPO, os.path.realpath(sys.prefix)) if p.startswith("/tmp/")})
        aside = [f"/run/diffii-{self.netns}-{i}" for i in range(len(keep))]
        pairs = list(zip(keep, aside, strict=True))
        before = "".join(f"mkdir -p {a} && mount --bind {k} {a} && " for k, a in pairs)
        after = "".join(f"mkdir -p {k} && mount --bind {a} {k} && " for k, a in pairs)
        fresh_tmp = f"{before}mount -t tmpfs tmpfs /tmp && {after}"
        setup = f'hostname {self.name} && {fresh_tmp}mkdir -p {home} && exec "$@"'
        return [
            "ip", "netns", "exec", self.netns,
            "unshare", "--mount", "--uts", "--propagation", "private",
            "sh", "-c", setup, "sh", *command,
        ]  # fmt: skip


@dataclass
class Network:
    """A bridge with the services' address; `add_host` joins a namespace to it by a veth pair."""

    tag: str = field(default_factory=lambda: uuid.uuid4().hex[:6])
    subnet: ipaddress.IPv4Network = field(default_factory=_free_subnet)
    hosts: list[Host] = field(default_factory=list)
    _links: list[str] = field(default_factory=list)

    @property
    def address(self) -> str:
        """Where the services listen: the bridge's address, on the host side of every veth."""
        return str(self.subnet.network_address + 1)

    def open(self) -> Network:
        bridge = f"dbr{self.tag}"
        _ip("link", "add", bridge, "type", "bridge")
        self._links.append(bridge)
        _ip("addr", "add", f"{self.address}/{self.subnet.prefixlen}", "dev", bridge)
        _ip("link", "set", bridge, "up")
        return self

    def add_host(self, name: str) -> Host:
        n = len(self.hosts) + 1
        host = Host(name, f"diffii-{self.tag}-{n}", str(self.subnet.network_address + 1 + n))
        outer, inner = f"dv{self.tag}{n}", f"dw{self.tag}{n}"
        _ip("netns", "add", host.netns)
        self.hosts.append(host)
        _ip("link", "add", outer, "type", "veth", "peer", "name", inner)
        self._links.append(outer)
        _ip("link", "set", outer, "master", f"dbr{self.tag}", "up")
        _ip("link", "set", inner, "netns", host.netns)
        _ip("-n", host.netns, "addr", "add", f"{host.address}/{self.subnet.prefixlen}", "dev", inner)
        _ip("-n", host.netns, "link", "set", inner, "up")
        return host

    def close(self) -> None:
        """Remove every namespace and link made here (a veth goes with its namespace's end)."""
        for host in self.hosts:
            subprocess.run(["ip", "netns", "del", host.netns], capture_output=True)
        for link in reversed(self._links):
            subprocess.run(["ip", "link", "del", link], capture_output=True)
        self.hosts.clear()
        self._links.clear()
