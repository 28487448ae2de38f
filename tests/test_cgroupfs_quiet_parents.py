"""Children of a parent whose CPU usage and PSI totals did not move are read without their CPU
and PSI files, on real cgroups, and stay exact: a child that runs moves its parent, and is read
in full at the next pass; a child is never vouched for by a parent not read again since."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

import pytest

from collectors.cgroupfs import CgroupReader
from collectors.samples import CgroupSample
from tests.support.cgroups import CgroupFactory, TestCgroup
from tests.support.tracked import track
from tests.test_cgroupfs_changed_only import hybrid, settle, sleeper

pytestmark = pytest.mark.root


def one_pass(reader: CgroupReader, cgs: list[TestCgroup]) -> list[CgroupSample]:
    reader.begin_pass()
    return [reader.read(c.rel, in_pass=True) for c in cgs]


def test_children_of_a_quiet_parent_are_skipped_and_stay_exact(cgroups: CgroupFactory) -> None:
    parent = cgroups.create("p")
    kids = [parent.child(f"c{i}") for i in range(2)]
    spinners = [spinner(k) for k in kids]
    family = [parent, *kids]
    reader = track(CgroupReader(cgroups.layout))
    for _ in range(3):
        for p in spinners:
            spin(p)  # their memory settles
        one_pass(reader, family)
    for _ in range(5):
        one_pass(reader, family)
    skips = reader.idle.hier_skips
    samples = one_pass(reader, family)
    assert reader.idle.hier_skips - skips == 2, "both children should skip CPU and PSI"
    for c, s in zip(family, samples, strict=True):
        assert s.cpu is not None and s.cpu.usage_usec == c.cpu_usage_usec()
    # A child runs: its parent moves, and at the next pass the child is read in full.
    spin(spinners[0])
    samples = one_pass(reader, family)
    for c, s in zip(family, samples, strict=True):
        assert s.cpu is not None and s.cpu.usage_usec == c.cpu_usage_usec()
    for p in spinners:
        p.kill()


def spinner(cg: TestCgroup) -> subprocess.Popen[bytes]:
    """A shell in the cgroup that spins a while on each line it reads: CPU moves, and (after
    a first round) none of its memory or pids files do."""
    p = cg.spawn(["sh", "-c", "while read x; do i=0; while [ $i -lt 3000 ]; do i=$((i+1)); "
                  "done; echo; done"], stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    spin(p)
    return p


def spin(p: subprocess.Popen[bytes]) -> None:
    """One round of spinning, returning once the shell is blocked in `read` again and its
    CPU was charged (it runs on for a moment after its echo)."""
    assert p.stdin is not None and p.stdout is not None
    p.stdin.write(b"go\n")
    p.stdin.flush()
    p.stdout.readline()
    deadline = time.monotonic() + 5
    last = None
    while time.monotonic() < deadline:
        state = Path(f"/proc/{p.pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        used = Path(f"/proc/{p.pid}/schedstat").read_text().split()[0]
        if state == "S" and used == last:
            return
        last = used
        time.sleep(0.002)
    raise AssertionError("the spinner did not go back to waiting")


def test_a_parent_not_read_again_vouches_for_nothing(cgroups: CgroupFactory) -> None:
    parent = cgroups.create("p")
    kid = parent.child("c")
    p = spinner(kid)
    reader = track(CgroupReader(cgroups.layout))
    for _ in range(3):
        spin(p)  # its memory settles
        one_pass(reader, [parent, kid])
    for _ in range(5):
        one_pass(reader, [parent, kid])
    skips = reader.idle.hier_skips
    one_pass(reader, [parent, kid])
    assert reader.idle.hier_skips > skips  # skipping now
    spin(p)
    s = reader.read(kid.rel)  # the parent was not read since the spin
    assert s.cpu is not None and s.cpu.usage_usec == kid.cpu_usage_usec()
    for _ in range(3):
        one_pass(reader, [parent, kid])
    # The child spins, and passes read only the parent: it moves once, then holds. Its stretch
    # starts after the child's last read, so it vouches for nothing before.
    spin(p)
    one_pass(reader, [parent])
    one_pass(reader, [parent])
    s = one_pass(reader, [parent, kid])[1]
    assert s.cpu is not None and s.cpu.usage_usec == kid.cpu_usage_usec()
    p.kill()


def test_a_child_with_a_cpu_quota_is_always_read(cgroups: CgroupFactory) -> None:
    # Its period timer counts periods on after its last run, without CPU in the parent.
    parent = cgroups.create("q")
    kid = parent.child("c")
    sleeper(kid)
    if hybrid(cgroups):
        kid.write("cpu", "cpu.cfs_quota_us", "50000")
    else:
        kid.write("unified", "cpu.max", "50000 100000")
    reader = track(CgroupReader(cgroups.layout))
    settle(reader, parent)
    settle(reader, kid)
    skips = reader.idle.hier_skips
    for _ in range(6):
        one_pass(reader, [parent, kid])
    assert reader.idle.hier_skips == skips
