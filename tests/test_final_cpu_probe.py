"""The eBPF program in the rmdir keeps a cgroup2 cgroup's CPU counter as cpu.stat shows it."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from collectors.final_cpu import ProbeUnavailable, RmdirCpu, RmdirCpuProbe
from tests.support.cgroups import CgroupFactory
from tests.support.churn_checks import usage_usec

pytestmark = pytest.mark.root

BURN = "i=0; while [ $i -lt {n} ]; do i=$((i+1)); done"


def _life(parent: Path, name: str, n: int) -> tuple[Path, int]:
    """A child cgroup of `parent` (cgroup2 only) that ran a shell loop of `n` steps, emptied."""
    d = parent / name
    d.mkdir()
    procs = str(d / "cgroup.procs")

    def enter() -> None:
        with open(procs, "w") as f:
            f.write("0")
    subprocess.run(["/bin/sh", "-c", BURN.format(n=n)], preexec_fn=enter, check=True)
    return d, d.stat().st_ino


def take_by_path(probe: RmdirCpuProbe, path: str) -> tuple[int, RmdirCpu] | None:
    """What the agent does for a cgroup known only by its path: its id, then its counter."""
    cgroup_id = probe.id_by_path(path)
    got = probe.take(cgroup_id) if cgroup_id is not None else None
    return None if cgroup_id is None or got is None else (cgroup_id, got)


def _fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def test_the_rmdir_keeps_what_cpu_stat_would_show(cgroups: CgroupFactory) -> None:
    if cgroups.layout.unified is None:
        pytest.fail("this test needs a cgroup2 hierarchy (hybrid or unified host)")
    parent = cgroups.create().dir("unified")
    fds = _fds()
    with RmdirCpuProbe.open() as probe:
        total_ns = 0
        for i in range(12):
            d, ino = _life(parent, f"life{i}", 3000 + 700 * i)
            # Flushed or not at the rmdir: read first (as a cycle would), via the parent's
            # read (which flushes its subtree), or never read (what a runtime's rmdir meets).
            read = usage_usec(d) if i % 3 == 0 else None
            if i % 3 == 1:
                usage_usec(parent)
            d.rmdir()
            got = probe.take(ino)
            assert got is not None, f"nothing kept for life{i}"
            if read is not None:
                assert got.usage_usec == read
            assert got.usage_ns > 1_000_000  # it ran: a few ms of shell
            total_ns += got.usage_ns
            assert probe.take(ino) is None  # taken once
        # The parent ran nothing itself: its counter is the sum of its children's, to the µs.
        assert usage_usec(parent) == total_ns // 1000
        assert probe.taken == 12
    assert _fds() == fds  # closing detaches and frees everything it opened


def test_a_cgroup_known_only_by_its_path_is_found_by_it(cgroups: CgroupFactory) -> None:
    """What the agent has of a cgroup made and removed before its watch saw it: the path."""
    if cgroups.layout.unified is None:
        pytest.fail("this test needs a cgroup2 hierarchy (hybrid or unified host)")
    root = cgroups.layout.unified
    parent = cgroups.create().dir("unified")
    with RmdirCpuProbe.open() as probe:
        # Long paths too: the map's key is cut at 511 bytes, the lookup cuts alike.
        (parent / ("d" * 250)).mkdir()
        for where, name in ((parent, "life-a"), (parent, "x" * 250),
                            (parent / ("d" * 250), "y" * 255)):
            d, ino = _life(where, name, 4000)
            read = usage_usec(d)
            rel = "/" + str(d.relative_to(root))
            d.rmdir()
            assert len(rel) > 511 or not name.startswith("y")
            got = take_by_path(probe, rel)
            assert got is not None, f"nothing kept for {rel[:60]}..."
            assert got[0] == ino
            assert got[1].usage_usec == read
            assert take_by_path(probe, rel) is None  # taken once
            assert probe.take(ino) is None  # and not again by id
        # Taken by id first (the agent watched it): the path finds nothing more.
        d, ino = _life(parent, "watched", 3000)
        rel = "/" + str(d.relative_to(root))
        d.rmdir()
        assert probe.take(ino) is not None
        assert take_by_path(probe, rel) is None
        # The same path again, a new life: its own counter.
        d, ino2 = _life(parent, "watched", 3000)
        read = usage_usec(d)
        d.rmdir()
        got = take_by_path(probe, rel)
        assert got is not None and got[0] == ino2 and got[1].usage_usec == read
        assert take_by_path(probe, "/no/such/cgroup") is None


def test_without_its_object_it_says_why() -> None:
    with pytest.raises(ProbeUnavailable, match="not built"):
        RmdirCpuProbe.open(Path("/nonexistent/final_cpu.bpf.o"))
