"""The web UI's costs: page weight, time to first render in a real headless Chromium, the agent's
CPU with one browser attached vs none (real agentd, N real cgroups), and the history ring's
memory at 1,000 workloads. Prints figures; asserts nothing about time. Run as root:

    .venv/bin/python tests/bench/bench_web.py [--count 1000] [--seconds 30]
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import gzip
import statistics
import sys
import time
import tracemalloc
import urllib.request
from pathlib import Path
from types import MappingProxyType

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from agent.model.snapshot import HostInfo, Rates, Snapshot
from agent.web.history import METRICS, HistoryRing
from tests.bench.bench_daemon import cpu_seconds, rss_kib
from tests.bench.bench_remote_write import workload
from tests.support.agentd import RunningAgent, running_agent
from tests.support.browser import chromium
from tests.support.cgroups import CgroupFactory

ASSETS = ("/", "/ui/app.js", "/ui/charts.js", "/ui/app.css")


def ring_memory(n: int = 1000, window_s: float = 900, interval_s: float = 5) -> None:
    host = HostInfo("h", "b", "m", "k", "hybrid", 2, 1 << 30, "0")
    rates = Rates(cpu_cores=0.1, io_read_bytes_per_s=1.0, io_write_bytes_per_s=2.0,
                  net_rx_bytes_per_s=3.0, net_tx_bytes_per_s=4.0)
    states = [dataclasses.replace(workload(i), rates=rates) for i in range(n)]
    workloads = MappingProxyType({w.identity.id: w for w in states})
    tracemalloc.start()
    before = tracemalloc.take_snapshot()
    ring = HistoryRing(window_s, interval_s)
    cycles = ring.capacity + 20  # more than one lap: the ring is full
    t0 = time.process_time()
    for seq in range(cycles):
        ring.record(Snapshot(seq, int((1e9 + seq * interval_s) * 1e9), 0, 0, host, workloads))
    cpu = (time.process_time() - t0) / cycles
    after = tracemalloc.take_snapshot()
    tracemalloc.stop()
    held = sum(s.size_diff for s in after.compare_to(before, "filename"))
    t0 = time.perf_counter()
    body = ring.get(states[500].identity.id)
    get_ms = (time.perf_counter() - t0) * 1000
    assert body is not None
    print(f"history ring, {n} workloads, {window_s:.0f} s at {interval_s:.0f} s "
          f"({ring.capacity} slots x {len(METRICS)} metrics): arrays {ring.nbytes() / 1e6:.2f} MB,"
          f" all Python objects {held / 1e6:.2f} MB (tracemalloc); record "
          f"{cpu * 1000:.1f} ms CPU per cycle; one workload's history as JSON-ready "
          f"{get_ms:.1f} ms")


def page_weight(agent: RunningAgent) -> None:
    sizes = {}
    zipped = 0
    for path in ASSETS:
        with urllib.request.urlopen(agent.base_url + path, timeout=10) as r:
            body = r.read()
        sizes[path] = len(body)
        zipped += len(gzip.compress(body))
    parts = ", ".join(f"{p} {s:,}" for p, s in sizes.items())
    print(f"page weight: {sum(sizes.values()):,} bytes ({parts}); {zipped:,} gzipped")
    lat, size = [], 0
    for _ in range(10):
        t = time.perf_counter()
        with urllib.request.urlopen(agent.base_url + "/api/v1/ui/workloads", timeout=10) as r:
            size = len(r.read())
        lat.append((time.perf_counter() - t) * 1000)
    print(f"/api/v1/ui/workloads (the table's data, fetched once per cycle): {size:,} bytes, "
          f"median {statistics.median(lat):.1f} ms")


def request_cpu(agent: RunningAgent, path: str, n: int = 20) -> float:
    """The agent's CPU seconds per request of `path` (n requests back to back)."""
    c0 = cpu_seconds(agent.proc.pid)
    for _ in range(n):
        with urllib.request.urlopen(agent.base_url + path, timeout=10) as r:
            r.read()
    return (cpu_seconds(agent.proc.pid) - c0) / n


def browser_cost(agent: RunningAgent, interval: float) -> None:
    """What one open page asks of the agent each cycle, measured request by request."""
    wid = agent.get("/api/v1/ui/workloads")["workloads"][-1]["id"]
    parts = {
        "table, default view": "/api/v1/ui/workloads?kind=container,service",
        "table, every cgroup": "/api/v1/ui/workloads",
        "health": "/healthz",
        "open workload's history": "/api/v1/history/" + wid.lstrip("/"),
    }
    costs = {k: request_cpu(agent, p) for k, p in parts.items()}
    text = ", ".join(f"{k} {v * 1000:.1f} ms" for k, v in costs.items())
    worst = (costs["table, every cgroup"] + costs["health"]
             + costs["open workload's history"]) / interval
    print(f"agent CPU per request: {text}; a page showing every cgroup with a workload open: "
          f"{worst * 100:.2f} % of a core at a {interval:g} s interval")


async def first_render(agent: RunningAgent, rounds: int = 3) -> None:
    times = []
    async with chromium() as page:
        for _ in range(rounds):
            await page.goto(agent.base_url + "/?r=" + str(time.monotonic()))
            times.append(float(await page.wait("document.body.dataset.firstRenderMs", 60)))
    print("time to first render (navigation start to a filled table, ms): "
          + ", ".join(f"{t:.0f}" for t in times))


def agent_cpu(agent: RunningAgent, seconds: float) -> float:
    pid = agent.proc.pid
    c0, t0 = cpu_seconds(pid), time.monotonic()
    time.sleep(seconds)
    return (cpu_seconds(pid) - c0) / (time.monotonic() - t0)


async def cpu_with_browser(agent: RunningAgent, seconds: float) -> float:
    async with chromium() as page:
        await page.goto(agent.base_url + "/")
        await page.wait("document.body.dataset.firstRenderMs", 60)
        # A person looking at one workload: its view stays open and refreshes every cycle.
        await page.eval("document.querySelector('#rows tr') && "
                        "document.querySelector('#rows tr').click()")
        return await asyncio.to_thread(agent_cpu, agent, seconds)


def settled_rss(agent: RunningAgent) -> tuple[int, int]:
    """(RSS in bytes, workloads) once three more cycles have run (the ring's arrays are
    full-size at once)."""
    seq = agent.get("/healthz")["snapshot_seq"]
    agent.wait_for(lambda: agent.get("/healthz")["snapshot_seq"] >= seq + 3, timeout=120,
                   interval=0.2)
    return rss_kib(agent.proc.pid) * 1024, int(agent.get("/api/v1/host")["workloads"])


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--count", type=int, default=1000, help="test cgroups the agent tracks")
    p.add_argument("--seconds", type=float, default=30, help="CPU measuring window")
    p.add_argument("--interval", type=float, default=5)
    p.add_argument("--rounds", type=int, default=3, help="alternating idle/attached rounds")
    args = p.parse_args()
    ring_memory(1000)
    factory = CgroupFactory(tag="bench")
    try:
        for i in range(args.count):
            factory.create(f"c{i:04d}")
        with running_agent({"interval": args.interval}) as agent:
            seq = agent.get("/healthz")["snapshot_seq"]
            agent.wait_for(lambda: agent.get("/healthz")["snapshot_seq"] >= seq + 2,
                           timeout=120, interval=0.2)
            print(f"agent tracks {agent.get('/api/v1/host')['workloads']} workloads, "
                  f"interval {args.interval:g} s")
            rss_on = settled_rss(agent)  # before any browser: the ring's cost alone
            page_weight(agent)
            browser_cost(agent, args.interval)
            asyncio.run(first_render(agent))
            # Alternating rounds, so load from elsewhere on the host falls on both sides.
            idle, attached = [], []
            for _ in range(args.rounds):
                idle.append(agent_cpu(agent, args.seconds))
                attached.append(asyncio.run(cpu_with_browser(agent, args.seconds)))
            i, a = statistics.median(idle), statistics.median(attached)
            print(f"agent CPU, {args.rounds} alternating rounds of {args.seconds:g} s (% of a "
                  f"core): no browser {', '.join(f'{x * 100:.2f}' for x in idle)}; one browser "
                  f"attached {', '.join(f'{x * 100:.2f}' for x in attached)}; medians "
                  f"{i * 100:.2f} vs {a * 100:.2f} (ratio {a / i:.2f})")
        with running_agent({"interval": args.interval, "web": {"enabled": False}}) as agent:
            rss_off = settled_rss(agent)
        (on, n_on), (off, n_off) = rss_on, rss_off
        print(f"agent RSS after 3 cycles: web on {on / 2**20:.1f} MiB ({n_on} workloads), "
              f"[web] enabled = false {off / 2**20:.1f} MiB ({n_off} workloads); difference "
              f"{(on - off) / 1e6:.1f} MB")
    finally:
        factory.close()


if __name__ == "__main__":
    main()
