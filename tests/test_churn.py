"""Container churn through a real agentd on real cgroups (cgroup2 and the v1 hierarchies).

50 lives a second, each a shell CPU burner in its own cgroup, removed 10 ms after it empties or
at once. Asserted: closed ledger periods balance the parent's kernel counter (billed +
unattributed == its delta), nothing is billed twice, every life the agent read at its end has
the kernel's last usage_usec as its final CPU and its bill, and (issue 11) every life has its
started, stopped and exact final at 10 ms, 95 % at once. A life removed at once is often gone
before its `populated 0` notice exists (rate-limited to one per 10 ms per file, delivered
through a kernel work item): its final CPU then comes from the eBPF program that runs inside
the rmdir (collectors.final_cpu), a CPU-only final. A CPU-only final read at `populated 0`
(removed before the full read, no rmdir probe) may be short by the exiting task's last slice.
The host is shared with other test runs, so fds are judged by what they point to: none
may point to one of our removed lives or to a removed directory of our prefix, and the count of
the rest (sockets, the state db; other tests' live cgroups left out) comes back within 64 of the
start.
"""

from __future__ import annotations

import time
from typing import Any

import pytest

from tests.conftest import needs_root
from tests.support.agentd import running_agent
from tests.support.cgroups import CgroupFactory
from tests.support.churn import Churn, Life, agent_fds
from tests.support.churn_checks import Verdict, settle_and_judge, usage_usec

pytestmark = needs_root

RATE = 50
SECONDS = 20
#: Short periods, so the run's periods close (and balance) within the test.
CONFIG: dict[str, Any] = {"interval": 1, "ledger": {"period_seconds": 5, "grace_seconds": 1}}


def _ours(fds: list[str], factory: CgroupFactory) -> list[str]:
    """fds on our lives (all removed by now) or on a removed directory of our prefix."""
    return [f for f in fds if f"{factory.prefix_name}/life-" in f
            or ("(deleted)" in f and factory.prefix_name in f)]


def _own_fd_count(fds: list[str], factory: CgroupFactory) -> int:
    """fds that are not on other tests' live cgroups (the host is shared): their files, and the
    v1 OOM eventfd that goes with each of their memory.oom_control fds."""
    others = [f for f in fds if f.startswith("/sys/fs/cgroup/") and factory.prefix_name not in f]
    oom = sum(1 for f in others if f.endswith("/memory.oom_control"))
    return len(fds) - len(others) - oom


def _churn(factory: CgroupFactory, delay_s: float) -> tuple[list[Life], list[str], list[str],
                                                          Verdict]:
    parent = factory.bases[factory.ref_key] / factory.prefix_name
    with running_agent(CONFIG) as agent:
        # make test builds the rmdir probe and installs libbpf: it must be on here.
        assert agent.get("/api/v1/host")["facts"]["final_cpu_at_rmdir"] == "ebpf"
        pid = agent.proc.pid
        before = agent_fds(pid)
        usage0 = usage_usec(parent)
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
        verdict = settle_and_judge(agent, lives, factory.prefix_rel,
                                   usage_usec(parent) - usage0)
    print(verdict.summary())
    print("\n".join(verdict.misses))
    return lives, before, after, verdict


@pytest.mark.parametrize("delay_s", [0.01, 0.0], ids=["rmdir-10ms", "rmdir-at-once"])
def test_churn_exact_and_leaves_no_fd_behind(cgroups: CgroupFactory, delay_s: float) -> None:
    lives, before, after, v = _churn(cgroups, delay_s)
    assert len(lives) == RATE * SECONDS
    # Closed periods balance the parent's kernel counter: what its children were billed plus
    # what no child was billed for is exactly what the kernel counted for it.
    assert v.parent_self == v.parent_delta > 0, v.summary()
    assert v.billed + v.unattributed == v.parent_delta, v.summary()
    assert v.duplicate_rows == 0 and v.over_billed == 0, v.summary()
    # Every life the agent read in full at its end: its final CPU is the kernel's last value.
    # A CPU-only final (removed before the full read) was read at `populated 0`, when the
    # exiting task may not yet have been charged its last slice (kernel 12,115 us, read 12,095
    # in one CI run): exact or short, never above.
    assert v.final_exact + v.partial_short == v.finals, v.summary()
    # With rmdir at once, a final read can race the removal and reach events but not the
    # ledger (2 of 1,000 lives in one CI run before the rmdir probe). Judged at 10 ms only.
    if delay_s:
        assert v.final_not_billed == 0, v.summary()
    print("read at the end but not billed as said:", v.final_not_billed)
    assert v.started == v.stopped, v.summary()
    # Issue 11: at 10 ms every life ends with an exact final; at once 95 % do.
    wanted = len(lives) if delay_s else int(0.95 * len(lives))
    assert v.final_exact >= wanted and v.stopped >= wanted, v.summary()
    assert _ours(after, cgroups) == []
    # Other tests on this host remove cgroups too: shown, not judged (their removals race).
    print("fds on other removed directories:", sum(1 for f in after if "(deleted)" in f))
    assert _own_fd_count(after, cgroups) <= _own_fd_count(before, cgroups) + 64, after
