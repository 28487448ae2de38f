"""Container churn through a real agentd on real cgroups (cgroup2 and the v1 hierarchies).

50 lives a second, each a shell CPU burner in its own cgroup, removed 10 ms after it empties or
at once. The host is shared with other test runs, so fds are judged by what they point to: none
may point to one of our removed lives or to a removed directory of our prefix, and the count of
the rest (sockets, the state db; other tests' live cgroups left out) comes back within 64 of the
start.
"""

from __future__ import annotations

import time
from typing import Any

import pytest

from tests.conftest import needs_root
from tests.support.agentd import RunningAgent, running_agent
from tests.support.cgroups import CgroupFactory
from tests.support.churn import Churn, Life, agent_fds

pytestmark = needs_root

RATE = 50
SECONDS = 20


def _ours(fds: list[str], factory: CgroupFactory) -> list[str]:
    """fds on our lives (all removed by now) or on a removed directory of our prefix."""
    return [f for f in fds if f"{factory.prefix_name}/life-" in f
            or ("(deleted)" in f and factory.prefix_name in f)]


def _own_fd_count(fds: list[str], factory: CgroupFactory) -> int:
    """fds that are not directories of other tests' live cgroups (the host is shared)."""
    return sum(1 for f in fds if not f.startswith("/sys/fs/cgroup/") or factory.prefix_name in f)


def _events(agent: RunningAgent, etype: str) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    since = 0
    while True:
        page = agent.get(f"/api/v1/events?type={etype}&since={since}&limit=10000")["events"]
        out.extend(page)
        if len(page) < 10000:
            return out
        since = page[-1]["id"]


def _churn(factory: CgroupFactory, delay_s: float) -> tuple[list[Life], list[str], list[str],
                                                          dict[str, list[dict[str, Any]]]]:
    with running_agent({"interval": 1}) as agent:
        pid = agent.proc.pid
        before = agent_fds(pid)
        t0 = time.monotonic()
        lives = Churn(factory, RATE, delay_s, workers=16).run(SECONDS)
        print(f"{len(lives)} lives in {time.monotonic() - t0:.1f} s")
        # Let the agent digest the tail of the churn and run a cycle.
        # A cycle slowed by the churn can leave the snapshot stale (/healthz 503, as it should):
        # wait_for retries until the agent answers healthy again.
        seq = agent.wait_for(lambda: agent.get("/healthz")["snapshot_seq"], timeout=30)
        agent.wait_for(lambda: agent.get("/healthz")["snapshot_seq"] >= seq + 2, timeout=30)
        time.sleep(1)
        after = agent_fds(pid)
        events = {t: _events(agent, t) for t in ("container_started", "container_stopped")}
    return lives, before, after, events


@pytest.mark.parametrize("delay_s", [0.01, 0.0], ids=["rmdir-10ms", "rmdir-at-once"])
def test_churn_leaves_no_fd_behind(cgroups: CgroupFactory, delay_s: float) -> None:
    lives, before, after, _ = _churn(cgroups, delay_s)
    assert len(lives) == RATE * SECONDS
    assert _ours(after, cgroups) == []
    # Other tests on this host remove cgroups too: shown, not judged (their removals race).
    print("fds on other removed directories:", sum(1 for f in after if "(deleted)" in f))
    assert _own_fd_count(after, cgroups) <= _own_fd_count(before, cgroups) + 64, after
