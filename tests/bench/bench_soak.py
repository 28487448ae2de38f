"""Soak: a real agentd under container churn for a long while; is it still bounded and prompt?

50 cgroup lives a second (cgroup2 and the v1 hierarchies, under our own prefix, removed 10 ms
after emptying), a /metrics scrape every second (OpenMetrics, gzipped, as Prometheus asks;
`--plain-metrics`: the text format, not compressed), an SSE client on the event stream, and
`agentctl ls` every 5 s; with `--idle N`, N more cgroups each holding a sleeping process (issue
11 asks for the final-read latency at 1,000 cgroups with a cycle running). Printed at the start
and at the end: the agent's fds, inotify watches (from /proc/<pid>/fdinfo), RSS (and those of
its final-read process), the prefix's
nr_dying_descendants, and the populated-0 -> final read latency p50/p99 (from
container_agent_final_read_latency_seconds, bucket upper bounds); also the scrape and /healthz
latency p50/p99 during the run, the host's CPU shares (busy, idle, stolen by the hypervisor:
latencies from a run with steal are not comparable), and the ledger's closed boundary: with
`--period 300` (the ledger's period, default an hour) churned periods close inside the run.
Asserts nothing about time. Run as root:
`.venv/bin/python tests/bench/bench_soak.py [--duration SECONDS] [--idle N] [--period SECONDS]`.
"""

from __future__ import annotations

import argparse
import re
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from tests.support.agent_side import agent_side, latency_quantiles
from tests.support.agentd import RunningAgent
from tests.support.cgroups import CgroupFactory, cgroup_factory
from tests.support.churn import Churn, agent_fds, final_read_process, inotify_watches
from tests.support.host_cpu import HostCpu
from tests.support.latency_probe import Probe
from tests.support.quantiles import quantile

_RECENT = re.compile(
    r'^container_agent_final_read_latency_recent_seconds\{quantile="([^"]+)"\} (\S+)$', re.M)


def _recent_quantiles(metrics: str) -> str:
    """The exact quantiles of the latest 2,048-4,096 final reads (the agent's ring)."""
    found = {q: float(v) for q, v in _RECENT.findall(metrics)}
    if not found:
        return "none yet"
    return ", ".join(f"p{float(q) * 100:g} {v * 1e3:.2f} ms" for q, v in found.items())


def _rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def _dying(factory: CgroupFactory) -> int:
    stat = factory.bases[factory.ref_key] / factory.prefix_name / "cgroup.stat"
    for line in stat.read_text().splitlines():
        k, v = line.split()
        if k == "nr_dying_descendants":
            return int(v)
    return -1


def _child_report(pid: int) -> str:
    child = final_read_process(pid)
    if child is None:
        return "final-read process: none"
    fds = agent_fds(child)
    return (f"final-read process: fds {len(fds)} (on removed dirs: "
            f"{sum(1 for f in fds if '(deleted)' in f)}), inotify watches "
            f"{inotify_watches(child)}, RSS {_rss_kib(child) / 1024:.1f} MiB")


def report(label: str, agent: RunningAgent, factory: CgroupFactory) -> float:
    """Prints the line; returns the RSS (MiB) in it: read after a scrape, so the start's
    includes the first scrape's render (~15 MiB at 1,000 cgroups)."""
    pid = agent.proc.pid
    fds = agent_fds(pid)
    metrics = agent.get_text("/metrics")
    closed = re.search(r"^container_agent_ledger_closed_before_seconds (\S+)$", metrics, re.M)
    closed_at = time.strftime("%H:%M:%S", time.gmtime(float(closed.group(1)))) if closed else "?"
    rss_mib = _rss_kib(pid) / 1024
    print(f"[{label}] fds {len(fds)} (on removed dirs: "
          f"{sum(1 for f in fds if '(deleted)' in f)}), inotify watches "
          f"{inotify_watches(pid)}, RSS {rss_mib:.1f} MiB, prefix "
          f"nr_dying_descendants {_dying(factory)}, final read "
          f"{latency_quantiles(metrics)}; the latest reads exactly: "
          f"{_recent_quantiles(metrics)}; ledger periods closed before {closed_at} UTC; "
          f"{_child_report(pid)}")
    return rss_mib


class Load:
    """Scrapes, /healthz, an SSE client and `agentctl ls`, until stopped."""

    def __init__(self, agent: RunningAgent, gzip: bool = True) -> None:
        self.agent = agent
        self.gzip = gzip
        self.stop = threading.Event()
        self.scrape_s: list[float] = []
        self.health_s: list[float] = []
        self.gzipped = 0
        self.sse_bytes = 0
        self.ls_failures = 0
        #: The agent's RSS (MiB) each minute of the churn: warm-up and growth told apart.
        self.rss_mib: list[float] = []
        #: The lowest and highest RSS (MiB, sampled each second) in each minute: a cycle's and
        #: a scrape's transient allocations against a floor that rises (a leak) or not.
        self.rss_band: list[tuple[float, float]] = []
        #: The exact quantiles of the latest final reads, each minute.
        self.recent_latency: list[str] = []
        self.threads = [threading.Thread(target=f, daemon=True)
                        for f in (self._sse, self._ls, self._rss)]
        self.probes: list[Probe] = []

    def __enter__(self) -> Load:
        # The timed clients run in processes of their own: not slowed by this one's GIL.
        self.probes = [Probe(self.agent.base_url + "/metrics", 1.0, self.gzip),
                       Probe(self.agent.base_url + "/healthz", 1.0)]
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        for probe in self.probes:
            probe.finish()
        self.scrape_s, self.health_s = (p.latency for p in self.probes)
        self.gzipped = self.probes[0].gzipped
        for t in self.threads:
            t.join(timeout=15)

    def _rss(self) -> None:
        minute: list[float] = []
        while not self.stop.wait(1.0):
            minute.append(_rss_kib(self.agent.proc.pid) / 1024)
            if len(minute) < 60:
                continue
            self.rss_mib.append(minute[-1])
            self.rss_band.append((min(minute), max(minute)))
            minute = []
            try:
                self.recent_latency.append(_recent_quantiles(self.agent.get_text("/metrics")))
            except OSError:
                self.recent_latency.append("(no answer)")

    def _sse(self) -> None:
        req = urllib.request.Request(self.agent.base_url + "/api/v1/events/stream?since=0")
        try:
            with urllib.request.urlopen(req, timeout=30) as resp:
                while not self.stop.is_set():
                    chunk = resp.read1(65536)
                    if not chunk:
                        return
                    self.sse_bytes += len(chunk)
        except OSError:
            return

    def _ls(self) -> None:
        while not self.stop.wait(5.0):
            if self.agent.agentctl("ls", timeout=60).returncode != 0:
                self.ls_failures += 1


def _events(agent: RunningAgent, etype: str) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    since = 0
    while True:
        page = agent.get(f"/api/v1/events?type={etype}&since={since}&limit=10000")
        out.extend(page["events"])
        if len(page["events"]) < 10000:
            return out
        since = page["events"][-1]["id"]


def ms_quantiles(values: list[float]) -> str:
    if not values:
        return "none"
    return f"p50 {quantile(values, 0.5) * 1e3:.1f} ms, p99 {quantile(values, 0.99) * 1e3:.1f} ms " \
           f"(n={len(values)})"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--duration", type=float, default=600.0, help="seconds of churn (600)")
    p.add_argument("--rate", type=float, default=50.0, help="cgroup lives per second (50)")
    p.add_argument("--period", type=int, default=3600,
                   help="ledger period_seconds (3600); shorter puts period closes, each of a"
                        " churned period, inside the soak (grace: a fifth of it, at most 120 s)")
    p.add_argument("--idle", type=int, default=0,
                   help="cgroups holding a sleeping process, besides the churn (0)")
    p.add_argument("--final-reads", choices=("forwarding", "realtime", "process", "thread"),
                   default="forwarding",
                   help="where final reads run: a process of their own at SCHED_FIFO that "
                        "reads the kernel watch's notices first (forwarding, the agent's "
                        "default); that process, the notices read by the agent (realtime); "
                        "that at normal priority (process); a thread of the agent (thread)")
    p.add_argument("--plain-metrics", action="store_true",
                   help="scrape /metrics for the plain text format, not gzip (Prometheus asks "
                        "for OpenMetrics, gzipped)")
    args = p.parse_args()
    with cgroup_factory("soak") as factory, tempfile.TemporaryDirectory() as tmp:
        for i in range(args.idle):
            factory.create(f"idle-{i:05d}").spawn(["sleep", str(int(args.duration) + 900)])
        ledger = {"period_seconds": args.period, "grace_seconds": min(120, args.period // 5)}
        events = {"final_read_process": args.final_reads != "thread",
                  "final_read_realtime": args.final_reads in ("forwarding", "realtime"),
                  "final_read_forwards_inotify": args.final_reads == "forwarding"}
        agent = RunningAgent(Path(tmp), {"interval": 1, "ledger": ledger, "events": events}, [])
        try:
            agent.wait_ready(timeout=180)  # a host busy with other cgroups starts slowly
            soak(agent, factory, args.duration, args.rate, not args.plain_metrics)
        finally:
            agent.stop(timeout=120)


def _exact(stop: dict[str, Any] | None, usage_usec: int) -> bool:
    """A container_stopped with final counters whose CPU is the kernel's last usage_usec."""
    return (stop is not None and bool(stop["fields"].get("final"))
            and stop["fields"].get("cpu_usage_usec") == usage_usec)


def soak(agent: RunningAgent, factory: CgroupFactory, duration: float, rate: float,
         gzip: bool = True) -> None:
    start_mib = report("start", agent, factory)
    t0 = time.monotonic()
    host = HostCpu()
    with Load(agent, gzip) as load:
        lives = Churn(factory, rate, 0.01, workers=16).run(duration)
    took = time.monotonic() - t0
    host_cpu = host.summary()
    time.sleep(3)  # the tail of the churn digested
    end_mib = report("end", agent, factory)
    stopped = {e["container"]["cgroup"]: e for e in _events(agent, "container_stopped")
               if e.get("container")}
    started = {e["container"]["cgroup"] for e in _events(agent, "container_started")
               if e.get("container")}
    exact = sum(1 for life in lives if _exact(stopped.get(life.rel), life.usage_usec))
    print(f"container_stopped for {sum(1 for x in lives if x.rel in stopped)} of "
          f"{len(lives)} lives; exact final CPU (== the kernel's last usage_usec): {exact}")
    # The lives that were not exact, for a diagnosis, with what the agent logged of them.
    log = agent.log().splitlines()
    for life in [x for x in lives if not _exact(stopped.get(x.rel), x.usage_usec)][:5]:
        e = stopped.get(life.rel)
        fields = {k: v for k, v in (e["fields"] if e else {}).items()
                  if k in ("final", "final_partial", "cpu_usage_usec")}
        print(f"  not exact: {life.rel}: kernel usage_usec {life.usage_usec}; "
              + (f"container_stopped {fields}" if e else "no container_stopped")
              + ("" if life.rel in started else "; no container_started"))
        for line in [x for x in log if life.rel in x][:10]:
            print(f"    log: {line}")
    print(f"the agent's side: {agent_side(agent.get_text('/metrics'))}")
    print(f"{len(lives)} lives in {took:.0f} s ({len(lives) / took:.1f}/s achieved); "
          f"/metrics {ms_quantiles(load.scrape_s)} ({load.gzipped} gzipped); "
          f"/healthz {ms_quantiles(load.health_s)}; "
          f"SSE {load.sse_bytes / 1e6:.1f} MB; agentctl ls failures {load.ls_failures}")
    print(f"during the churn, {host_cpu}")
    print("RSS each minute of the churn (MiB): "
          + ", ".join(f"{r:.1f}" for r in load.rss_mib))
    print("RSS lowest-highest in each minute (MiB, each second): "
          + ", ".join(f"{lo:.1f}-{hi:.1f}" for lo, hi in load.rss_band))
    # From the start, the growth includes the warm-up (the first snapshots kept side by side, the
    # first scrape's render, the API's threads and connections); after the first minute, only
    # what the churn leaves behind.
    warm = f"; {end_mib - load.rss_mib[0]:+.1f} MiB after the first minute" \
        if load.rss_mib else ""
    print(f"RSS growth: {end_mib - start_mib:+.1f} MiB from the start{warm}")
    print("final read latency of the latest reads, each minute: "
          + "; ".join(load.recent_latency))




if __name__ == "__main__":
    main()
