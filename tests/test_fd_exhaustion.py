"""Out of file descriptors: a real agentd under a low RLIMIT_NOFILE, with more real cgroups
than its fds can follow, degrades instead of dying (issue: agentd exited on EMFILE at 5,000
cgroups under a 20,000 limit).

The reader keeps ~27 fds per hybrid cgroup and the kernel watch up to 7; 250 cgroups under
1,024 fds exhaust both. Before the kernel watch had its own bound, the next rescan's listing
of /proc failed with EMFILE and ended agentd. Then 300 idle HTTP clients take what is left.
"""

from __future__ import annotations

import contextlib
import os
import re
import socket
import time

from tests.support.agentd import RunningAgent, running_agent
from tests.support.cgroups import CgroupFactory

NOFILE = 1024
N = 250
#: Rescans every 2 s: the rescan is where the unbounded watch's EMFILE ended agentd.
CONFIG = {"interval": 1, "rescan_interval": 2}


def _gauge(metrics: str, name: str) -> float:
    m = re.search(rf"^{name} (\S+)$", metrics, re.M)
    assert m is not None, f"{name} not in /metrics"
    return float(m.group(1))


def _up(metrics: str) -> dict[str, int]:
    return {c: int(v) for c, v in re.findall(
        r'^container_agent_component_up\{component="([^"]+)"\} (\d)', metrics, re.M)}


def _fds(pid: int, under: str = "") -> int:
    """The process's open fds (those whose target contains `under`)."""
    n = 0
    for fd in os.listdir(f"/proc/{pid}/fd"):
        with contextlib.suppress(OSError):  # closed meanwhile
            n += under in os.readlink(f"/proc/{pid}/fd/{fd}")
    return n


def _cpu_rows(agent: RunningAgent, prefix: str) -> dict[str, int | None]:
    rows = agent.get("/api/v1/containers")["containers"]
    return {r["cgroup"]: r["cpu_usage_usec"] for r in rows
            if r["cgroup"].startswith(prefix + "/")}


def test_agent_degrades_and_gives_fds_back_when_out_of_them() -> None:
    started = time.monotonic()
    factory = CgroupFactory(tag="emfile")
    removed = False
    try:
        with running_agent(CONFIG, nofile=NOFILE) as agent:
            pid = agent.proc.pid
            # Before: what the host's other cgroups hold (the pools may be full of them).
            agent.wait_for(lambda: agent.get("/healthz")["snapshot_seq"] >= 3)
            before = agent.get_text("/metrics")
            fds0 = _fds(pid)
            for i in range(N):  # while it runs: each is told by inotify and followed at once
                factory.create(f"c{i:03d}")
            paths = {cg.rel for cg in factory.created}
            # Every cgroup is collected, with its CPU counter, though most of their files
            # are read by path.
            agent.wait_for(lambda: (lambda r: paths <= r.keys() and None not in (
                r[p] for p in paths))(_cpu_rows(agent, factory.prefix_rel)), timeout=30,
                interval=0.5)
            metrics = agent.wait_for(lambda: (lambda m: _gauge(
                m, "container_agent_kernel_watch_degraded_cgroups") > 0 and m)(
                    agent.get_text("/metrics")), timeout=15, interval=0.5)
            assert (_gauge(metrics, "container_agent_kernel_watch_fds")
                    <= _gauge(metrics, "container_agent_kernel_watch_fds_limit")
                    <= 0.2 * NOFILE)
            peak = _fds(pid)
            assert peak < NOFILE
            # It stays up through several rescans: snapshots advance, every cgroup is there.
            seq = agent.get("/healthz")["snapshot_seq"]
            until = time.monotonic() + 6
            while time.monotonic() < until:
                seq = agent.wait_for(lambda s=seq: (lambda h: h["status"] == "ok" and h[
                    "snapshot_seq"] > s and h["snapshot_seq"])(agent.get("/healthz")),
                    timeout=5)
                peak = max(peak, _fds(pid))
            rows = _cpu_rows(agent, factory.prefix_rel)
            assert paths <= rows.keys() and None not in (rows[p] for p in paths)
            # Said: in the host facts, in the health of the parts concerned, once in the log.
            host = agent.get("/api/v1/host")
            assert host["facts"]["kernel_watch"].startswith("degraded: out of file descriptors")
            up = _up(agent.get_text("/metrics"))
            assert up["collection"] == up["kernel_watch"] == up["events"] == 1, up
            log = agent.log()
            assert log.count("kernel watch out of file descriptors") == 1, log[-3000:]
            assert "Too many open files" not in log, log[-3000:]
            # The rest of its fds taken by idle clients: accept pauses (asyncio), nothing dies.
            clients = [socket.create_connection(("127.0.0.1", agent.port)) for _ in range(300)]
            time.sleep(3)
            for c in clients:
                c.close()
            seq = agent.get("/healthz")["snapshot_seq"]
            agent.wait_for(lambda: agent.get("/healthz")["snapshot_seq"] > seq + 1, timeout=10)
            up = _up(agent.get_text("/metrics"))
            assert set(up.values()) == {1}, up
            # Removed, the cgroups' fds are given back: none left on their directories.
            factory.close()
            removed = True
            agent.wait_for(lambda: _fds(pid, factory.prefix_name) == 0, timeout=15,
                           interval=0.5)
            # Back to what it held before (within what a cycle opens for a moment).
            agent.wait_for(lambda: _fds(pid) <= fds0 + 16, timeout=15, interval=0.5)
            degraded0 = _gauge(before, "container_agent_kernel_watch_degraded_cgroups")
            agent.wait_for(lambda: _gauge(agent.get_text(
                "/metrics"), "container_agent_kernel_watch_degraded_cgroups") <= degraded0)
            if degraded0 == 0:  # and no longer said (from the next snapshot on)
                agent.wait_for(lambda: "kernel_watch" not in agent.get("/api/v1/host")["facts"],
                               timeout=5)
            agent.wait_for(lambda: not paths & _cpu_rows(agent, factory.prefix_rel).keys(),
                           timeout=10)
            assert agent.proc.poll() is None
    finally:
        if not removed:
            factory.close()
    assert time.monotonic() - started < 60
