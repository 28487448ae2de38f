"""The ledger against real cgroups and the kernel's own counters (needs root)."""

from __future__ import annotations

import time
from collections import defaultdict
from pathlib import Path

from agent.ledger.ledger import Ledger
from agent.ledger.periods import NS
from collectors.samples import CgroupSample
from tests.support.cgroups import CgroupFactory, TestCgroup
from tests.test_ledger_support import ident, open_ledger, read_boot_id, real_sample, snapshot

END = 10**11


def observe(led: Ledger, cgs: list[TestCgroup], seq: int) -> list[CgroupSample]:
    boot = read_boot_id()
    samples = [real_sample(cg.rel) for cg in cgs]
    states = [(ident(cg.rel, s.inode or 0), s) for cg, s in zip(cgs, samples, strict=True)]
    led.observe_snapshot(snapshot(states, boot, seq), boot)
    return samples


def cpu_rows(led: Ledger, cgroup: str, subject: str = "self") -> dict[int, int]:
    out: dict[int, int] = defaultdict(int)
    for r in led.storage.rows(0, END):  # closed rows only
        if r.cgroup == cgroup and r.meter == "cpu_usec" and r.subject == subject:
            out[r.period_start] += r.quantity
    return dict(out)


def test_closed_periods_sum_to_the_kernel_delta_across_boundaries(
    cgroups: CgroupFactory, tmp_path: Path
) -> None:
    led = open_ledger(tmp_path / "l.db", period=2, grace=0)
    cg = cgroups.create()
    first = observe(led, [cg], 1)[0]
    k0 = cg.cpu_usage_usec()
    assert first.cpu is not None and first.cpu.usage_usec == k0
    burner = cg.burn(3.5)  # crosses at least one 2-second boundary
    seen = [(first.wall_ns, k0)]
    seq = 1
    while burner.poll() is None:
        time.sleep(0.25)
        seq += 1
        s = observe(led, [cg], seq)[0]
        assert s.cpu is not None and s.cpu.usage_usec is not None
        seen.append((s.wall_ns, s.cpu.usage_usec))
    final = real_sample(cg.rel)  # the cgroup is empty now: its counter is final
    led.observe_final(ident(cg.rel, final.inode or 0), final, read_boot_id())
    assert final.cpu is not None and final.cpu.usage_usec is not None
    seen.append((final.wall_ns, final.cpu.usage_usec))
    k1 = cg.cpu_usage_usec()
    led.close_due(time.time_ns() + 10 * NS)
    per_period = cpu_rows(led, cg.rel)
    assert sum(per_period.values()) == k1 - k0 > 200_000
    assert len([v for v in per_period.values() if v > 0]) >= 2
    for start, value in per_period.items():
        s, e = start * NS, (start + 2) * NS
        inside = [c for t, c in seen if s <= t < e]
        before = [c for t, c in seen if t <= s] or [k0]
        after = [c for t, c in seen if t >= e] or [k1]
        # At least what the kernel counted between samples inside the period, at most what
        # it counted between the samples around it.
        if inside:
            assert value >= inside[-1] - inside[0]
        assert value <= after[0] - before[-1]


def test_a_cgroup_living_100ms_is_billed_its_exact_usage(
    cgroups: CgroupFactory, tmp_path: Path
) -> None:
    led = open_ledger(tmp_path / "l.db", period=3600, grace=0)
    host = cgroups.create("host")
    observe(led, [host], 1)  # the ledger is running before the short cgroup exists
    short = cgroups.create("short")
    short.burn(0.1).wait()
    final = real_sample(short.rel)
    assert final.populated is False
    led.observe_final(ident(short.rel, final.inode or 0), final, read_boot_id())
    kernel = short.cpu_usage_usec()
    short.remove()
    led.close_due(time.time_ns() + 7200 * NS)
    assert sum(cpu_rows(led, short.rel).values()) == kernel > 50_000


def test_children_removed_unseen_land_in_unattributed(
    cgroups: CgroupFactory, tmp_path: Path
) -> None:
    led = open_ledger(tmp_path / "l.db", period=3600, grace=0)
    parent = cgroups.create("p")
    live = parent.child("live")
    observe(led, [parent, live], 1)
    p0, l0 = parent.cpu_usage_usec(), live.cpu_usage_usec()
    dead = [parent.child(f"gone{i}") for i in range(2)]
    procs = [d.burn(0.3) for d in dead] + [live.burn(0.2)]
    for p in procs:
        p.wait()
    dead_usage = [d.cpu_usage_usec() for d in dead]
    for d in dead:
        d.remove()  # rmdir: the usage now lives only in the parent's counter
    observe(led, [parent, live], 2)
    p1, l1 = parent.cpu_usage_usec(), live.cpu_usage_usec()
    led.close_due(time.time_ns() + 7200 * NS)
    own = sum(cpu_rows(led, parent.rel).values())
    child = sum(cpu_rows(led, live.rel).values())
    unattributed = sum(cpu_rows(led, parent.rel, "unattributed").values())
    assert own == p1 - p0 and child == l1 - l0
    assert child + unattributed == own  # the parent balances exactly
    # The kernel sums nanoseconds and shows floor(ns / 1000) per cgroup, so a parent's
    # usage_usec may exceed the sum of its children's by < 1 us per child (3 children here).
    assert sum(dead_usage) > 100_000
    assert 0 <= unattributed - sum(dead_usage) < 3
