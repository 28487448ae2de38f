"""End to end through a real agentd: kernel events in the log, agentctl events, /metrics, and a
dead webhook that never slows collection."""

from __future__ import annotations

import json
import re
import socket
import subprocess
import sys
import time
from collections.abc import Iterator

import pytest

from agent.core.store import Store
from agent.events.store import EventLog
from tests.support.agentd import BIN, RunningAgent, running_agent
from tests.support.cgroups import CgroupFactory
from tests.support.tracked import track

PY = sys.executable


@pytest.fixture
def dead_receiver() -> Iterator[str]:
    """A TCP port that accepts connections (kernel backlog) and never answers."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen(64)
        yield f"http://127.0.0.1:{s.getsockname()[1]}/hook"


def _metric(agent: RunningAgent, name: str, label: str) -> float:
    text = agent.get_text("/metrics")
    m = re.search(rf"^{name}\{{[^}}]*{label}[^}}]*\}} (\S+)$", text, re.M)
    return float(m.group(1)) if m else 0.0


def test_short_lived_cgroup_through_agentd(cgroups: CgroupFactory, dead_receiver: str) -> None:
    config = {"events": {"webhook_url": dead_receiver, "queue_size": 4, "retry_limit": 0,
                         "delivery_timeout_s": 0.5}}
    with running_agent(config) as agent:
        seq0 = agent.get("/healthz")["snapshot_seq"]
        cg = cgroups.create()
        proc = cg.spawn([PY, "-S", "-c", "import time\nt=time.monotonic()\n"
                         "while time.monotonic()-t<0.05: pass"])
        proc.wait()

        def stopped() -> list[dict[str, object]]:
            r = agent.agentctl("events", "--type", "container_stopped", "--container", cg.rel,
                               "--json")
            assert r.returncode == 0, r.stderr
            return list(json.loads(r.stdout)["events"])

        events = agent.wait_for(stopped, timeout=10)
        kernel = cg.cpu_usage_usec()
        assert events[0]["fields"]["cpu_usage_usec"] == kernel  # type: ignore[index]
        r = agent.agentctl("events", "--container", cg.rel)
        assert r.returncode == 0
        lines = r.stdout.splitlines()
        assert "container_started" in lines[0] and "container_stopped" in lines[1]
        agent.wait_for(lambda: _metric(agent, "container_agent_events_total",
                                       'type="container_stopped"') >= 1, timeout=10)
        # The dead webhook: deliveries pile up and are dropped, collection goes on.
        agent.wait_for(lambda: _metric(agent, "container_agent_event_deliveries_dropped_total",
                                       'sink="webhook"') >= 1, timeout=20)
        agent.wait_for(lambda: agent.get("/healthz")["snapshot_seq"] >= seq0 + 3, timeout=20)


def test_agentctl_follow_and_bad_input(cgroups: CgroupFactory) -> None:
    with running_agent() as agent:
        r = agent.agentctl("events", "--type", "bogus")
        assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1, r.stderr
        assert "unknown event type" in r.stderr
        r = agent.agentctl("events", "--since", "-3")
        assert r.returncode == 2 and "Traceback" not in r.stderr
        last = agent.get("/api/v1/events?limit=1")["last_id"]
        follow = subprocess.Popen(
            [str(BIN / "agentctl"), "--socket", str(agent.socket), "events", "--follow",
             "--json", "--type", "container_started,container_stopped", "--since", str(last)],
            stdout=subprocess.PIPE, text=True,
        )
        try:
            cg = cgroups.create()
            cg.spawn(["true"]).wait()
            got = []
            assert follow.stdout is not None
            while len(got) < 2:
                doc = json.loads(follow.stdout.readline())
                if doc["container"]["cgroup"] == cg.rel:
                    got.append(doc["type"])
            assert got == ["container_started", "container_stopped"]
        finally:
            follow.kill()
            follow.wait()


def test_cpu_throttled_from_cycles(cgroups: CgroupFactory) -> None:
    with running_agent({"interval": 1, "events": {"cpu_throttled_share": 0.3}}) as agent:
        cg = cgroups.create()
        cg.write("cpu", "cpu.cfs_period_us", "100000")
        cg.write("cpu", "cpu.cfs_quota_us", "10000")  # 10 % of one CPU
        cg.spawn([PY, "-S", "-c", "while True: pass"])
        events = agent.wait_for(lambda: agent.get(
            f"/api/v1/events?type=cpu_throttled&container={cg.rel}")["events"], timeout=40)
        share = events[0]["fields"]["share"]
        assert 0.3 <= share <= 1.0
        time.sleep(3)  # still throttled: one event per episode, not one per cycle
        again = agent.get(f"/api/v1/events?type=cpu_throttled&container={cg.rel}")["events"]
        assert len(again) == 1


def test_agent_start_and_stop_are_events() -> None:
    with running_agent() as agent:
        started_events = agent.get("/api/v1/events?type=agent_started")["events"]
        assert len(started_events) == 1
        assert started_events[0]["fields"]["pid"] == agent.proc.pid
        assert agent.stop() == 0
        log = EventLog(track(Store(agent.state_dir / "agent.db")))
        stopped = log.query(types=("agent_stopped",))
        assert [e.fields["pid"] for e in stopped] == [agent.proc.pid]
        assert stopped[0].id > started_events[0]["id"]


def test_pids_max_through_agentd_with_poll_scope(cgroups: CgroupFactory) -> None:
    """In agentd, v1 counters are polled only under a limit; a child of a pids-limited cgroup
    is in that scope and still reports its refused forks."""
    parent = cgroups.create("pids-parent")
    if "pids" in parent.dirs:
        parent.write("pids", "pids.max", "3")
    elif (parent.dirs["unified"] / "pids.max").exists():
        parent.write("unified", "pids.max", "3")
    else:
        pytest.skip("no pids controller")
    child = parent.child("kid")
    with running_agent({"interval": 1}) as agent:
        agent.wait_for(lambda: agent.get("/healthz")["snapshot_seq"] >= 2)
        proc = child.spawn(["sh", "-c", "for i in 1 2 3 4 5 6; do sleep 1 & done; wait"])
        proc.wait(timeout=30)

        def hits() -> int:
            r = agent.agentctl("events", "--type", "pids_max", "--json")
            return sum(int(e["fields"]["count"]) for e in json.loads(r.stdout)["events"])

        assert agent.wait_for(hits, timeout=10) >= 1


def test_limited_subtrees() -> None:
    from types import MappingProxyType

    from agent.events.poll_scope import limited_subtrees
    from agent.model.snapshot import (
        HostInfo,
        Snapshot,
        WorkloadIdentity,
        WorkloadKind,
        WorkloadState,
    )
    from collectors.samples import UNLIMITED, CgroupSample, MemorySample, PidsSample

    def state(path: str, pids_max: int | None, mem_max: int | None) -> WorkloadState:
        ident = WorkloadIdentity(path, WorkloadKind.CGROUP, "", path, path, 1)
        return WorkloadState(ident, CgroupSample(
            path=path, inode=1, monotonic_ns=0, wall_ns=0,
            pids=PidsSample(max=pids_max), memory=MemorySample(max=mem_max)))

    states = [state("/a", 10, UNLIMITED), state("/a/b", UNLIMITED, None), state("/c", None, 5),
              state("/c/d", UNLIMITED, UNLIMITED), state("/e", UNLIMITED, UNLIMITED)]
    snap = Snapshot(1, 0, 0, 0, HostInfo("h", "b", "m", "k", "hybrid", 1, 1, "v"),
                    MappingProxyType({s.identity.id: s for s in states}))
    pids, mem = limited_subtrees(snap)
    assert pids == {"/a", "/a/b"}
    assert mem == {"/c", "/c/d"}
