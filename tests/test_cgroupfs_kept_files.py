"""Kept file fds of CgroupReader on real cgroups: a kept file re-read with pread at offset 0
gives the kernel's current value, release() closes every fd kept for a cgroup (directories and
files, every hierarchy), and running out of fds gives half of them back without losing a field.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from collectors.cgroupfs import CgroupReader
from tests.support.cgroups import CgroupFactory, TestCgroup, open_fd_targets
from tests.support.tracked import track

pytestmark = pytest.mark.root


def fds_into(cg: TestCgroup) -> list[str]:
    """This process's fds that point at one of the cgroup's directories or their files."""
    dirs = [str(d) for d in cg.dirs.values()]
    return [t for t in open_fd_targets() if any(t == d or t.startswith(d + "/") for d in dirs)]


def test_kept_files_read_fresh_values(cgroups: CgroupFactory) -> None:
    cg = cgroups.create()
    reader = track(CgroupReader(cgroups.layout))
    first = reader.read(cg.rel)
    kept = fds_into(cg)
    # Files are kept, not only the directories (one per hierarchy).
    assert len(kept) > len(cg.dirs) and reader.kept_fds == len(kept)
    assert any(t.endswith("/cpu.stat") for t in kept)
    p = cg.burn(seconds=0.2)
    assert p.wait(timeout=30) == 0
    second = reader.read(cg.rel)
    # The same fds answered the second read (and, as the cgroup ran, those of the files read
    # only then are kept too).
    assert set(kept) < set(fds_into(cg))
    assert first.cpu is not None and second.cpu is not None
    assert second.cpu.usage_usec == cg.cpu_usage_usec() > (first.cpu.usage_usec or 0)


def test_release_closes_dirs_and_files_of_every_hierarchy(cgroups: CgroupFactory) -> None:
    a, b = cgroups.create(), cgroups.create()
    reader = track(CgroupReader(cgroups.layout))
    reader.read(a.rel)
    reader.read(b.rel)
    kept_b = len(fds_into(b))
    assert len(fds_into(a)) > len(a.dirs) and kept_b > len(b.dirs)
    reader.release(a.rel)
    assert fds_into(a) == []
    assert len(fds_into(b)) == kept_b == reader.kept_fds  # the other cgroup's stay
    reader.close()
    assert fds_into(b) == [] and reader.kept_fds == 0


def test_removed_cgroup_with_kept_files_reads_vanished(cgroups: CgroupFactory) -> None:
    cg = cgroups.create("again")
    reader = track(CgroupReader(cgroups.layout))
    first = reader.read(cg.rel)
    cg.remove()  # rmdir succeeds while our fds are open: they answer ENODEV from now on
    assert reader.read(cg.rel).vanished
    cg2 = cgroups.create("again")
    second = reader.read(cg2.rel)
    assert not second.vanished and second.inode != first.inode
    assert second.cpu is not None and second.cpu.usage_usec == cg2.cpu_usage_usec()


EMFILE = """
import os, resource, sys
from collectors.cgroupfs import CgroupReader
from collectors.layout import detect_layout
paths = sys.argv[1:]
reader = CgroupReader(detect_layout())
limit = len(os.listdir("/proc/self/fd")) + 60
resource.setrlimit(resource.RLIMIT_NOFILE, (limit, resource.getrlimit(resource.RLIMIT_NOFILE)[1]))
reader._dirs._cap = 10_000  # as if other code took the fds after the cap was set
complete = 0
for _ in range(3):
    for p in paths:
        s = reader.read(p)
        complete += s.cpu is not None and s.memory is not None and s.pids is not None
print(reader.kept_fds, complete, len(os.listdir("/proc/self/fd")), limit)
"""


def test_out_of_fds_gives_half_back_and_loses_nothing(cgroups: CgroupFactory) -> None:
    cgs = [cgroups.create() for _ in range(12)]
    out = subprocess.run(
        [sys.executable, "-c", EMFILE, *(c.rel for c in cgs)],
        capture_output=True, text=True, check=True, cwd=Path(__file__).parents[1],
    )
    kept, complete, open_now, limit = map(int, out.stdout.split())
    # 12 cgroups need far more than 60 fds kept; the reader gave back instead of failing.
    assert 0 < kept < 60 and open_now <= limit
    assert complete >= 3 * 12 - 2  # at most the reads that hit EMFILE lack a part
