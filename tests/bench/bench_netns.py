"""Benchmark: one network collection cycle over 100 namespaces with 3 interfaces each.

    sudo .venv/bin/python tests/bench/bench_netns.py [--namespaces 100] [--cycles 50]

Makes N namespaces `ca-bench-<hex>-i` (deleted at the end, whatever happens), each with lo,
one end of a veth pair (namespaces 2k and 2k+1 are paired) and a dummy device (ifb where the
kernel has no dummy driver). Prints, after a warm-up cycle, the median and p90 wall and CPU
time of: the collector alone, the network component's collect() (with one workload mapped to
each namespace), and building the metric families (scrape side). Then, for comparison,
pyroute2's own way into a namespace (IPRoute(netns=...)): its open and query cost per
namespace. Target: <= 10 ms per warm cycle.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from types import MappingProxyType

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from agent.core.component import AgentContext
from agent.core.store import Store
from agent.model.snapshot import (
    HostInfo,
    Snapshot,
    WorkloadIdentity,
    WorkloadKind,
    WorkloadState,
)
from agent.network.component import NetworkComponent, NetworkSnapshot
from collectors.layout import detect_layout
from collectors.netns import NetnsCollector, find_namespaces
from collectors.samples import CgroupSample


def ip_batch(lines: list[str]) -> subprocess.CompletedProcess[str]:
    with tempfile.NamedTemporaryFile("w", suffix=".ip", delete=False) as f:
        f.write("\n".join(lines) + "\n")
    try:
        return subprocess.run(["ip", "-force", "-batch", f.name], capture_output=True, text=True)
    finally:
        os.unlink(f.name)


def make_namespaces(prefix: str, n: int) -> tuple[list[str], str]:
    names = [f"{prefix}-{i}" for i in range(n)]
    res = ip_batch([f"netns add {x}" for x in names])
    if res.returncode != 0:
        raise SystemExit(f"bench_netns: cannot create namespaces: {res.stderr.strip()}")
    veths = [f"link add name v{i} netns {names[i]} type veth peer name v{i + 1} netns "
             f"{names[i + 1]}" for i in range(0, n - 1, 2)]
    if n % 2:
        veths.append(f"link add name v{n - 1} netns {names[-1]} type veth peer name "
                     f"w{n - 1} netns {names[-1]}")
    res = ip_batch(veths)
    if res.returncode != 0:
        raise SystemExit(f"bench_netns: cannot create veths: {res.stderr.strip()}")
    kind = "dummy"
    if ip_batch([f"link add name d0 netns {names[0]} type dummy"]).returncode != 0:
        kind = "ifb"  # no dummy driver in this kernel
    res = ip_batch([f"link add name d{i} netns {x} type {kind}" for i, x in enumerate(names)
                    if not (i == 0 and kind == "dummy")])
    if res.returncode != 0:
        raise SystemExit(f"bench_netns: cannot create {kind} devices: {res.stderr.strip()}")
    return names, kind


def delete_namespaces(names: list[str]) -> None:
    ip_batch([f"netns del {x}" for x in names])


def measure(fn: Callable[[], object], cycles: int) -> tuple[list[float], list[float]]:
    walls, cpus = [], []
    for _ in range(cycles):
        c0, w0 = time.process_time(), time.perf_counter()
        fn()
        walls.append(time.perf_counter() - w0)
        cpus.append(time.process_time() - c0)
    return walls, cpus


def show(label: str, walls: list[float], cpus: list[float]) -> None:
    def p90(xs: list[float]) -> float:
        return sorted(xs)[int(len(xs) * 0.9)]

    print(f"{label:<38} wall median {statistics.median(walls) * 1e3:7.2f} ms  "
          f"p90 {p90(walls) * 1e3:7.2f} ms   cpu median {statistics.median(cpus) * 1e3:7.2f} ms")


def snapshot_for(names: list[str]) -> Snapshot:
    now = time.monotonic_ns()
    states = {}
    for i, x in enumerate(names):
        st = os.stat(f"/run/netns/{x}")
        ident = WorkloadIdentity(
            id=f"bench-{i:03d}", kind=WorkloadKind.CONTAINER, runtime="runc",
            name=f"bench-{i}", cgroup=f"/bench/{i}", inode=i + 1,
            namespaces=MappingProxyType({"net": st.st_ino}),
        )
        states[ident.id] = WorkloadState(
            ident, CgroupSample(ident.cgroup, i + 1, now, time.time_ns()))
    host = HostInfo("bench", "b", "m", os.uname().release, "hybrid", os.cpu_count() or 1, 0, "0")
    return Snapshot(1, time.time_ns(), now, 0, host, MappingProxyType(states))


def pyroute2_reference(names: list[str], k: int) -> None:
    from pyroute2 import IPRoute

    fds0 = len(os.listdir("/proc/self/fd"))
    t0 = time.perf_counter()
    iprs = [IPRoute(netns=x) for x in names[:k]]
    opened = (time.perf_counter() - t0) / k
    fds = len(os.listdir("/proc/self/fd")) - fds0
    for ipr in iprs:
        ipr.get_links()
    walls, cpus = measure(lambda: [ipr.get_links() for ipr in iprs], 10)
    for ipr in iprs:
        ipr.close()
    print(f"pyroute2 IPRoute(netns=...) reference on {k} namespaces: open {opened * 1e3:.2f} ms "
          f"per namespace ({fds / k:.0f} fds each); get_links "
          f"{statistics.median(walls) / k * 1e3:.3f} ms per namespace (cpu "
          f"{statistics.median(cpus) / k * 1e3:.3f} ms) = "
          f"{statistics.median(walls) / k * len(names) * 1e3:.1f} ms for {len(names)}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--namespaces", type=int, default=100)
    ap.add_argument("--cycles", type=int, default=50)
    args = ap.parse_args()
    if os.geteuid() != 0:
        print("bench_netns: needs root (creates network namespaces)", file=sys.stderr)
        return 2
    if args.namespaces < 2 or args.cycles < 1:
        print("bench_netns: --namespaces >= 2 and --cycles >= 1", file=sys.stderr)
        return 2
    prefix = f"ca-bench-{uuid.uuid4().hex[:8]}"
    names: list[str] = []
    try:
        t0 = time.perf_counter()
        names, kind = make_namespaces(prefix, args.namespaces)
        print(f"setup: {len(names)} namespaces x 3 interfaces (lo, veth, {kind}) in "
              f"{time.perf_counter() - t0:.2f} s; python {sys.version.split()[0]}, kernel "
              f"{os.uname().release}, {os.cpu_count()} cpus")
        fds0 = len(os.listdir("/proc/self/fd"))
        col = NetnsCollector()
        w0, c0 = time.perf_counter(), time.process_time()
        scan = col.collect()
        print(f"collector cold cycle (open {scan.opened} sockets, {scan.link_dumps} link dumps, "
              f"{scan.nsid_queries} RTM_GETNSID): wall {(time.perf_counter() - w0) * 1e3:.1f} ms"
              f", cpu {(time.process_time() - c0) * 1e3:.1f} ms")
        ifaces = sum(len(s.interfaces) for s in scan.namespaces.values())
        print(f"found {len(scan.namespaces)} namespaces (with the host's and any others), "
              f"{ifaces} interfaces; open fds +{len(os.listdir('/proc/self/fd')) - fds0}")
        show("collector warm cycle", *measure(col.collect, args.cycles))
        last = col.collect()
        print(f"  last warm cycle: {last.stats_dumps} stats dumps, {last.link_dumps} link dumps, "
              f"{last.nsid_queries} RTM_GETNSID")
        col.close()
        nprocs = sum(1 for e in os.scandir("/proc") if e.name.isdigit())
        walls, cpus = measure(find_namespaces, args.cycles)
        show(f"  of which enumeration ({nprocs} processes)", walls, cpus)
        walls, _ = measure(lambda: find_namespaces(netns_dirs=()), args.cycles)
        print(f"  enumeration per process: {statistics.median(walls) / max(nprocs, 1) * 1e6:.1f} "
              f"us (a stat of /proc/<pid>/ns/net each)")
        full = NetnsCollector(refresh_s=0.0)  # worst case: every link re-dumped every cycle
        full.collect()
        show("collector, full link dump every cycle", *measure(full.collect, args.cycles))
        full.close()

        with tempfile.TemporaryDirectory() as tmp:
            store = Store(Path(tmp) / "s.db")
            ctx = AgentContext(config={"cadvisor": True, "network": {}}, state_dir=Path(tmp),
                               layout=detect_layout(), store=store)
            comp = NetworkComponent()
            asyncio.run(comp.start(ctx))
            snap = snapshot_for(names)
            comp.collect(ctx, snap)
            show(f"component collect ({len(names)} workloads)",
                 *measure(lambda: comp.collect(ctx, snap), args.cycles))
            net = comp.collect(ctx, snap)
            assert isinstance(net, NetworkSnapshot)
            full = Snapshot(snap.seq, snap.wall_ns, snap.monotonic_ns, 0, snap.host,
                            snap.workloads, MappingProxyType({"network": net}))
            show("metric families (scrape side)",
                 *measure(lambda: list(comp.metric_families(full)), max(args.cycles // 5, 3)))
            asyncio.run(comp.stop())
            store.close()
        print(f"open fds after close: {len(os.listdir('/proc/self/fd')) - fds0:+d}")
        pyroute2_reference(names, min(10, len(names)))
        return 0
    finally:
        if names:
            delete_namespaces(names)
        leftovers = [p.name for p in Path("/run/netns").glob(prefix + "-*")]
        if leftovers:
            delete_namespaces(leftovers)


if __name__ == "__main__":
    raise SystemExit(main())
