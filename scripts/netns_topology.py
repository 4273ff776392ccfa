"""Network namespaces joined by veth pairs, for calls that never leave the machine.

Two layouts:

* direct:   A (10.77.0.1) ---- B (10.77.0.2)                       one veth pair
* relayed:  A (10.77.1.2) -- R (10.77.1.1 | 10.77.2.1) -- B (10.77.2.2)
            R does not forward in the kernel (ip_forward stays 0): only the userspace relay of
            scripts/impair_relay.py carries traffic between A and B, so it can drop and delay.

Names are unique per run (a random token), and ``Topology.destroy()`` removes every namespace and
``/etc/netns/<ns>`` directory it created; it is safe to call twice. IPv6 is switched off inside the
namespaces so the captures carry no router solicitations or MLD reports, only the call.
Needs root and iproute2 (``ip netns``, ``ip link``).
"""

from __future__ import annotations

import secrets
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path


class TopologyError(RuntimeError):
    """A namespace or link could not be created."""


def _ip(*args: str) -> None:
    done = subprocess.run(["ip", *args], capture_output=True, text=True)
    if done.returncode != 0:
        raise TopologyError(f"ip {' '.join(args)}: {done.stderr.strip()}")


def netns_available() -> str:
    """'' when namespaces can be made here, else the reason they cannot."""
    import os

    if os.geteuid() != 0:
        return "needs root (network namespaces and packet sockets)"
    if shutil.which("ip") is None:
        return "iproute2 is missing: apt-get install -y iproute2"
    done = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True)
    if done.returncode != 0:
        return f"ip netns does not work here: {done.stderr.strip()}"
    return ""


@dataclass
class Namespace:
    name: str
    iface: str  # the veth end inside this namespace facing the peer or the relay
    ip: str  # its address
    extra_ifaces: dict[str, str] = field(default_factory=dict)  # R: iface -> address

    def exec_prefix(self) -> list[str]:
        return ["ip", "netns", "exec", self.name]


@dataclass
class Topology:
    """The namespaces of one run. ``a``/``b`` are the call's ends; ``r`` the relay (relayed only)."""

    token: str
    a: Namespace
    b: Namespace
    r: Namespace | None = None
    prefix_len: int = 24
    created: list[str] = field(default_factory=list)
    etc_dirs: list[Path] = field(default_factory=list)

    def neighbour(self, side: str) -> tuple[Namespace, str, str]:
        """(namespace, iface, subnet prefix 'x.y.z.') next to side 'a' or 'b': where local
        services for that side (DNS, the telemetry server) live."""
        end = self.a if side == "a" else self.b
        subnet = end.ip.rsplit(".", 1)[0] + "."
        if self.r is None:
            other = self.b if side == "a" else self.a
            return other, other.iface, subnet
        for iface, address in self.r.extra_ifaces.items():
            if address.startswith(subnet):
                return self.r, iface, subnet
        raise TopologyError(f"no relay interface on {subnet}0/{self.prefix_len}")

    def add_address(self, ns: Namespace, iface: str, address: str) -> None:
        _ip("-n", ns.name, "addr", "add", f"{address}/{self.prefix_len}", "dev", iface)

    def write_hosts(self, ns: Namespace, lines: list[str]) -> Path:
        """/etc/netns/<ns>/hosts, bind-mounted over /etc/hosts by ``ip netns exec``."""
        directory = Path("/etc/netns") / ns.name
        directory.mkdir(parents=True, exist_ok=True)
        self.etc_dirs.append(directory)
        path = directory / "hosts"
        path.write_text("127.0.0.1 localhost\n" + "".join(f"{line}\n" for line in lines))
        return path

    def destroy(self) -> None:
        for name in reversed(self.created):
            subprocess.run(["ip", "netns", "del", name], capture_output=True)
        self.created.clear()
        for directory in self.etc_dirs:
            shutil.rmtree(directory, ignore_errors=True)
        self.etc_dirs.clear()


def _make_ns(topo: Topology, name: str) -> None:
    _ip("netns", "add", name)
    topo.created.append(name)
    _ip("-n", name, "link", "set", "lo", "up")
    for key in ("all", "default"):
        subprocess.run(["ip", "netns", "exec", name, "sysctl", "-q", "-w",
                        f"net.ipv6.conf.{key}.disable_ipv6=1"], capture_output=True)


def _veth(topo: Topology, ns1: str, if1: str, ip1: str, ns2: str, if2: str, ip2: str) -> None:
    # Created in ns1 directly, so a crash never leaves a stray veth in the root namespace.
    _ip("-n", ns1, "link", "add", if1, "type", "veth", "peer", "name", if2, "netns", ns2)
    for ns, iface, address in ((ns1, if1, ip1), (ns2, if2, ip2)):
        subprocess.run(["ip", "netns", "exec", ns, "sysctl", "-q", "-w",
                        f"net.ipv6.conf.{iface}.disable_ipv6=1"], capture_output=True)
        _ip("-n", ns, "addr", "add", f"{address}/{topo.prefix_len}", "dev", iface)
        _ip("-n", ns, "link", "set", iface, "up")


def create(relayed: bool = False, token: str | None = None) -> Topology:
    """Make the namespaces and links; on any failure remove what was made and raise."""
    token = token or secrets.token_hex(3)
    names = {side: f"insp-{token}-{side}" for side in "abr"}
    ifs = {k: f"iv{token}{k}" for k in ("a", "b", "ra", "rb")}  # <= 15 characters
    if not relayed:
        topo = Topology(token, Namespace(names["a"], ifs["a"], "10.77.0.1"),
                        Namespace(names["b"], ifs["b"], "10.77.0.2"))
    else:
        topo = Topology(
            token,
            Namespace(names["a"], ifs["a"], "10.77.1.2"),
            Namespace(names["b"], ifs["b"], "10.77.2.2"),
            Namespace(names["r"], ifs["ra"], "10.77.1.1", {ifs["ra"]: "10.77.1.1", ifs["rb"]: "10.77.2.1"}),
        )
    try:
        _make_ns(topo, topo.a.name)
        _make_ns(topo, topo.b.name)
        if topo.r is None:
            _veth(topo, topo.a.name, topo.a.iface, topo.a.ip, topo.b.name, topo.b.iface, topo.b.ip)
        else:
            _make_ns(topo, topo.r.name)
            _veth(topo, topo.a.name, topo.a.iface, topo.a.ip, topo.r.name, ifs["ra"], "10.77.1.1")
            _veth(topo, topo.b.name, topo.b.iface, topo.b.ip, topo.r.name, ifs["rb"], "10.77.2.1")
    except BaseException:
        topo.destroy()
        raise
    return topo
