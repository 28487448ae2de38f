"""Real network namespaces for tests: `ip netns add ca-test-<hex>-N`, veth pairs between two of
them (never the host's namespace), 198.18.0.0/15 addresses, and bounded UDP traffic.

    with NetnsFactory() as nets:
        a, b = nets.create(), nets.create()
        pair = nets.veth(a, b)                       # a:"ca0" 198.18.x.1 <-> b:"ca1" 198.18.x.2
        nets.send_udp(pair, count=100, payload=1000)  # a -> b, returns datagrams received

So that counters are exactly predictable, each namespace has IPv6 disabled (no router
solicitations, MLD or DAD) and each veth end a permanent neighbour entry for the other (no ARP):
a UDP datagram with N bytes of payload is then one frame of N + 42 bytes on the veth
(14 Ethernet + 20 IPv4 + 8 UDP) and nothing else crosses the link.

Sockets are opened inside a namespace by a short-lived thread that setns()es into it, so no
process is needed to send or receive. Everything is deleted at close(), even after a failure.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from collectors.rtnetlink import OpenRequest, run_in_namespaces

NETNS_DIR = Path("/run/netns")
#: Ethernet + IPv4 + UDP headers of one datagram on a veth.
UDP_OVERHEAD = 14 + 20 + 8
T = TypeVar("T")


def ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    res = subprocess.run(
        ["ip", *args], capture_output=True, text=True, timeout=30, stdin=subprocess.DEVNULL
    )
    if check and res.returncode != 0:
        raise RuntimeError(f"ip {' '.join(args)}: {res.stderr.strip()}")
    return res


class TestNetns:
    """One named network namespace created by a test."""

    __test__ = False

    def __init__(self, name: str) -> None:
        self.name = name
        self.path = NETNS_DIR / name
        st = os.stat(self.path)
        #: (st_dev, st_ino): the key the collector uses.
        self.key = (st.st_dev, st.st_ino)

    @property
    def ino(self) -> int:
        return self.key[1]

    def ip(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return ip("-n", self.name, *args, check=check)

    def run(self, fn: Callable[[], T]) -> T:
        """Call fn() in a thread that has joined this namespace (sockets it makes stay here)."""
        result = run_in_namespaces([OpenRequest(self.key, [str(self.path)])], fn)[self.key]
        if isinstance(result, OSError):
            raise result
        return result

    def socket(self, family: int = socket.AF_INET, kind: int = socket.SOCK_DGRAM) -> socket.socket:
        return self.run(lambda: socket.socket(family, kind | socket.SOCK_CLOEXEC))

    def sysctl(self, key: str, value: str) -> None:
        """Write a net.* sysctl of this namespace (/proc/sys/net is per namespace of the opener)."""

        def write() -> None:
            Path("/proc/sys", *key.split(".")).write_text(value)

        self.run(write)

    def bridge(self, name: str, *ports: str) -> None:
        """A bridge, up, with `ports` enslaved. Multicast snooping off: a snooping bridge sends
        IGMP reports (group 224.0.0.106) out of its ports, which would spoil exact counts."""
        self.ip("link", "add", "name", name, "type", "bridge", "mcast_snooping", "0")
        for port in ports:
            self.ip("link", "set", "dev", port, "master", name)
        self.ip("link", "set", "dev", name, "up")

    def link(self, name: str) -> dict[str, object]:
        import json

        out: list[dict[str, object]] = json.loads(
            self.ip("-j", "-d", "-s", "-s", "link", "show", "dev", name).stdout
        )
        return out[0]


@dataclass
class VethPair:
    a: TestNetns
    b: TestNetns
    a_if: str
    b_if: str
    a_addr: str
    b_addr: str


class NetnsFactory:
    """Makes test namespaces under one unique prefix; close() deletes them and their links."""

    def __init__(self, tag: str = "") -> None:
        self.prefix = f"ca-test-{tag}{uuid.uuid4().hex[:8]}"
        self.namespaces: list[TestNetns] = []
        self.procs: list[subprocess.Popen[bytes]] = []
        self._pairs = 0

    def __enter__(self) -> NetnsFactory:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def create(self, ipv6: bool = False) -> TestNetns:
        name = f"{self.prefix}-{len(self.namespaces)}"
        ip("netns", "add", name)
        try:
            ns = TestNetns(name)
        except OSError:
            ip("netns", "del", name, check=False)
            raise
        self.namespaces.append(ns)
        if not ipv6:
            ns.sysctl("net.ipv6.conf.all.disable_ipv6", "1")
            ns.sysctl("net.ipv6.conf.default.disable_ipv6", "1")
        return ns

    def attach(self, pid: int) -> TestNetns:
        """Name the namespace of `pid` (a test container's), like `ip netns attach`; close()
        removes only the name: the namespace lives as long as its processes."""
        name = f"{self.prefix}-{len(self.namespaces)}"
        ip("netns", "attach", name, str(pid))
        ns = TestNetns(name)
        self.namespaces.append(ns)
        ns.sysctl("net.ipv6.conf.all.disable_ipv6", "1")
        ns.sysctl("net.ipv6.conf.default.disable_ipv6", "1")
        return ns

    def delete(self, ns: TestNetns) -> None:
        ip("netns", "del", ns.name)
        self.namespaces.remove(ns)

    def veth(
        self, a: TestNetns, b: TestNetns, a_if: str = "ca0", b_if: str = "ca1", mtu: int = 1500
    ) -> VethPair:
        """A veth pair between two test namespaces, up, addressed, with static neighbours."""
        if a is b:
            raise ValueError("a veth pair needs two namespaces")
        n = self._pairs
        self._pairs += 1
        # 198.18.0.0/15 is reserved for benchmarking (RFC 2544): one /30 per pair.
        base = 4 * n
        a_addr = f"198.18.{base // 256}.{base % 256 + 1}"
        b_addr = f"198.18.{base // 256}.{base % 256 + 2}"
        ip("link", "add", "name", a_if, "netns", a.name, "mtu", str(mtu), "type", "veth",
           "peer", "name", b_if, "netns", b.name, "mtu", str(mtu))
        for ns, ifname, addr in ((a, a_if, a_addr), (b, b_if, b_addr)):
            ns.ip("addr", "add", f"{addr}/30", "dev", ifname)
            ns.ip("link", "set", "dev", ifname, "up")
        a_mac = str(a.link(a_if)["address"])
        b_mac = str(b.link(b_if)["address"])
        a.ip("neigh", "replace", b_addr, "lladdr", b_mac, "dev", a_if, "nud", "permanent")
        b.ip("neigh", "replace", a_addr, "lladdr", a_mac, "dev", b_if, "nud", "permanent")
        return VethPair(a, b, a_if, b_if, a_addr, b_addr)

    def send_udp(
        self, pair: VethPair, count: int, payload: int, reverse: bool = False,
        port: int = 40000, timeout: float = 10.0,
    ) -> int:
        """Send `count` datagrams of `payload` bytes from a to b (b to a if reverse); return how
        many arrived. Bounded: at most `count` datagrams, at most `timeout` seconds."""
        src, dst = (pair.b, pair.a) if reverse else (pair.a, pair.b)
        dst_addr = pair.a_addr if reverse else pair.b_addr
        rx = dst.socket()
        tx = src.socket()
        try:
            rx.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
            rx.bind((dst_addr, port))
            rx.setblocking(False)
            data = b"x" * payload
            got = 0
            deadline = time.monotonic() + timeout
            for _ in range(count):
                tx.sendto(data, (dst_addr, port))
                # Drain as we go so the receive buffer never drops a datagram.
                got += _drain(rx)
            rx.settimeout(0.5)
            while got < count and time.monotonic() < deadline:
                try:
                    rx.recv(65536)
                    got += 1
                except TimeoutError:
                    break
            return got
        finally:
            rx.close()
            tx.close()

    def spawn(self, argv: Sequence[str], ns: TestNetns | None = None) -> subprocess.Popen[bytes]:
        """A process (inside `ns` via ip netns exec when given); killed at close()."""
        prefix = ["ip", "netns", "exec", ns.name] if ns is not None else []
        proc = subprocess.Popen(
            [*prefix, *argv],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        self.procs.append(proc)
        return proc

    def close(self) -> None:
        for proc in self.procs:
            with contextlib.suppress(ProcessLookupError):
                os.kill(proc.pid, signal.SIGKILL)
            with contextlib.suppress(Exception):
                proc.wait(timeout=5)
        self.procs.clear()
        for ns in list(self.namespaces):
            ip("netns", "del", ns.name, check=False)
        self.namespaces.clear()
        # Belt and braces: anything left under our prefix (a create that failed half-way).
        with contextlib.suppress(FileNotFoundError):
            for entry in NETNS_DIR.iterdir():
                if entry.name.startswith(self.prefix + "-"):
                    ip("netns", "del", entry.name, check=False)


def _drain(sock: socket.socket) -> int:
    n = 0
    while True:
        try:
            sock.recv(65536)
        except BlockingIOError:
            return n
        n += 1


def children_of_self() -> set[int]:
    """Child processes of this process (all threads), to check that nothing was left behind."""
    out: set[int] = set()
    for task in Path("/proc/self/task").iterdir():
        with contextlib.suppress(OSError):
            out.update(int(p) for p in (task / "children").read_text().split())
    return out


def open_fds() -> set[int]:
    return {int(fd) for fd in os.listdir("/proc/self/fd")}
