"""Idle re-reads on real cgroups: an idle cgroup's sample comes from comparing the bytes of
its last quiet read, and is the one a whole read gives; whatever changes without CPU in the
cgroup (a task moved out, a freeze, a limit written) shows at the next read all the same.
"""

from __future__ import annotations

import os
import time

import pytest

from collectors.cgroupfs import CgroupReader
from collectors.samples import CgroupSample
from tests.support.cgroups import CgroupFactory
from tests.support.tracked import track
from tests.test_cgroupfs_changed_only import hybrid, settle, sleeper

pytestmark = pytest.mark.root


def values(s: CgroupSample) -> CgroupSample:
    return s.at(0, 0)  # everything but the time


def idle_rereads(reader: CgroupReader, rel: str, n: int = 4) -> CgroupSample:
    """Read until idle, then `n` more reads; asserts they came from idle re-reads."""
    hits = reader.idle.rereads
    s = None
    for _ in range(n + 3):
        s = reader.read(rel)
    assert reader.idle.rereads - hits >= n, "an idle cgroup was not re-read by compare"
    assert s is not None
    return s


def test_an_idle_rereads_sample_is_the_whole_reads(cgroups: CgroupFactory) -> None:
    cg = cgroups.create()
    sleeper(cg)
    reader = track(CgroupReader(cgroups.layout))
    settle(reader, cg)
    s = idle_rereads(reader, cg.rel)
    with CgroupReader(cgroups.layout) as fresh:
        whole = fresh.read(cg.rel)
    assert values(s) == values(whole)
    assert s.pids is not None and s.pids.current == 1 and s.populated


def test_changes_without_cpu_show_after_idle_rereads(cgroups: CgroupFactory) -> None:
    cg = cgroups.create()
    elsewhere = cgroups.create()
    p = sleeper(cg)
    reader = track(CgroupReader(cgroups.layout))
    settle(reader, cg)
    idle_rereads(reader, cg.rel)
    # A freeze: no task of the cgroup runs, no file of it is written but the freezer's.
    if hybrid(cgroups):
        cg.write("freezer", "freezer.state", "FROZEN")
    else:
        cg.write("unified", "cgroup.freeze", "1")
    deadline = time.monotonic() + 5
    while not reader.read(cg.rel).frozen:
        assert time.monotonic() < deadline, "the freeze never showed"
        time.sleep(0.02)
    if hybrid(cgroups):
        cg.write("freezer", "freezer.state", "THAWED")
    else:
        cg.write("unified", "cgroup.freeze", "0")
    settle(reader, cg)
    idle_rereads(reader, cg.rel)
    # A limit written from outside.
    key = "pids" if hybrid(cgroups) else "unified"
    cg.write(key, "pids.max", "55")
    s = reader.read(cg.rel)
    assert s.pids is not None and s.pids.max == 55
    idle_rereads(reader, cg.rel)
    # The task moved out: a write to the other cgroup, none to this one.
    elsewhere.add_pid(p.pid)
    s = reader.read(cg.rel)
    assert s.pids is not None and s.pids.current == 0
    assert s.populated is False


def test_a_cgroup_that_runs_again_is_read_in_full(cgroups: CgroupFactory) -> None:
    cg = cgroups.create()
    reader = track(CgroupReader(cgroups.layout))
    sleeper(cg)
    settle(reader, cg)
    before = idle_rereads(reader, cg.rel)
    assert cg.burn(seconds=0.2).wait(timeout=30) == 0
    # wait() returns at the burner's exit; its last slice is charged a moment later.
    prev, usage = -1, cg.cpu_usage_usec()
    while usage != prev:
        time.sleep(0.005)
        prev, usage = usage, cg.cpu_usage_usec()
    s = reader.read(cg.rel)
    assert s.cpu is not None and before.cpu is not None
    assert s.cpu.usage_usec == cg.cpu_usage_usec() > (before.cpu.usage_usec or 0)
    key = "pids" if hybrid(cgroups) else "unified"
    assert s.pids is not None and s.pids.peak == int(cg.read(key, "pids.peak")) > 1


def test_a_closed_directorys_fd_numbers_given_to_other_files_are_not_compared(
    cgroups: CgroupFactory,
) -> None:
    # The compare reads kept fds by number. When a directory of the cgroup is closed (pool
    # shrink, sweep) its numbers go to the next files opened: here another idle cgroup's files
    # of the same names, which read as this one's did (pids.current 1). A limit then written
    # to the closed directory (no longer watched) must show, not the other cgroup's bytes.
    a, b = cgroups.create(), cgroups.create()
    sleeper(a)
    sleeper(b)
    reader = track(CgroupReader(cgroups.layout))
    settle(reader, a)
    idle_rereads(reader, a.rel)
    key = "pids" if hybrid(cgroups) else "unified"
    a_dir, b_dir = str(a.dir(key)), str(b.dir(key))
    kept = reader._dirs.kept(a_dir, time.monotonic_ns())
    assert kept is not None and kept.files
    freed: dict[int, str | None] = {kept.fd: None, **{fd: n for n, fd in kept.files.items()}}
    reader._dirs.drop(a_dir)
    held: list[int] = []
    try:
        for want in sorted(freed):
            name = freed[want]
            while True:
                fd = os.open(b_dir if name is None else f"{b_dir}/{name}", os.O_RDONLY)
                held.append(fd)
                if fd >= want:
                    assert fd == want, "the freed fd number was not the next one given"
                    break
        a.write(key, "pids.max", "55")
        s = reader.read(a.rel)
        assert s.pids is not None and s.pids.max == 55 and s.pids.current == 1
    finally:
        for fd in held:
            os.close(fd)
