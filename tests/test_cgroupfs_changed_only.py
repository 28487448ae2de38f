"""CgroupReader reads only what can have changed, on real cgroups, and stays exact: a file not
read stands for a value that has not moved (checked against the kernel's files), limits
written from outside show at the next read, a cgroup that ran is read again, and everything
is read at least every FULL_READ_EVERY reads.
"""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

import pytest

from collectors import v1_paths
from collectors.cgroupfs import FULL_READ_AFTER_S, FULL_READ_EVERY, CgroupReader
from collectors.layout import LayoutKind
from collectors.samples import UNLIMITED, CgroupSample
from tests.support.cgroups import CgroupFactory, TestCgroup
from tests.support.files_read import files_read
from tests.support.tracked import track

pytestmark = pytest.mark.root


def sleeper(cg: TestCgroup) -> subprocess.Popen[bytes]:
    p = cg.spawn(["sleep", "300"])
    deadline = time.monotonic() + 5
    while p.pid not in cg.pids() and time.monotonic() < deadline:
        time.sleep(0.01)
    return p


def settle(reader: CgroupReader, cg: TestCgroup) -> CgroupSample:
    """Read until two reads in a row see the same CPU usage (the cgroup is idle)."""
    last = reader.read(cg.rel)
    for _ in range(50):
        time.sleep(0.02)
        s = reader.read(cg.rel)
        if s.cpu is not None and last.cpu is not None and s.cpu.usage_usec == last.cpu.usage_usec:
            return s
        last = s
    raise AssertionError("cgroup did not go idle")


def hybrid(cgroups: CgroupFactory) -> bool:
    return cgroups.layout.kind is not LayoutKind.UNIFIED


def idle_with_whole_read(
    cgroups: CgroupFactory, full_read_after_s: float = FULL_READ_AFTER_S,
) -> tuple[TestCgroup, CgroupReader, list[str]]:
    """An idle cgroup (one sleeping process), its reader, and the files a whole read reads."""
    cg = cgroups.create()
    sleeper(cg)
    reader = track(CgroupReader(cgroups.layout, full_read_after_s=full_read_after_s))
    settle(reader, cg)
    with files_read() as full:
        reader._last.clear()  # as on a first read
        reader.read(cg.rel)
    return cg, reader, full


def test_idle_cgroup_skips_cpu_driven_and_limit_files(cgroups: CgroupFactory) -> None:
    cg, reader, full = idle_with_whole_read(cgroups)
    with files_read() as idle:
        s = reader.read(cg.rel)
    assert len(idle) < len(full)
    skipped = set(full) - set(idle)
    assert {"cgroup.stat", "cpu.stat", "pids.current"} <= set(idle)
    if hybrid(cgroups):
        assert {"memory.limit_in_bytes", "pids.max", "cpu.cfs_quota_us",
                "blkio.throttle.io_serviced_recursive", "pids.peak"} <= skipped
        assert {"memory.stat", "memory.usage_in_bytes", "pids.current",
                "freezer.state"} <= set(idle)
        # The values standing for the unread files are the kernel's.
        assert s.pids is not None and s.pids.peak == int(cg.read("pids", "pids.peak"))
        assert s.pids.current == int(cg.read("pids", "pids.current")) == 1
        assert s.memory is not None and s.memory.max == UNLIMITED  # limit_in_bytes unset
        assert s.cpu is not None and s.cpu.weight is not None


def test_limits_written_while_idle_show_at_the_next_read(cgroups: CgroupFactory) -> None:
    cg = cgroups.create()
    sleeper(cg)
    reader = track(CgroupReader(cgroups.layout))
    before = settle(reader, cg)
    if hybrid(cgroups):
        cg.write("memory", "memory.limit_in_bytes", str(256 << 20))
        cg.write("pids", "pids.max", "77")
        cg.write("cpu", "cpu.cfs_quota_us", "50000")
    else:
        cg.write("unified", "pids.max", "77")
    s = reader.read(cg.rel)
    assert s.cpu is not None and before.cpu is not None
    assert s.cpu.usage_usec == before.cpu.usage_usec  # no CPU: only the write tells
    assert s.pids is not None and s.pids.max == 77
    if hybrid(cgroups):
        assert s.memory is not None and s.memory.max == 256 << 20
        assert s.cpu.max_quota_usec == 50000
    with files_read() as again:
        reader.read(cg.rel)
    assert "pids.max" not in again  # read once per write


def test_unwatched_directories_read_limits_every_time(cgroups: CgroupFactory) -> None:
    cg = cgroups.create()
    sleeper(cg)
    reader = track(CgroupReader(cgroups.layout, max_open_dirs=0))  # nothing kept, nothing watched
    settle(reader, cg)
    with files_read() as idle:
        reader.read(cg.rel)
    assert "pids.max" in idle
    key = "pids" if hybrid(cgroups) else "unified"
    cg.write(key, "pids.max", "33")
    s = reader.read(cg.rel)
    assert s.pids is not None and s.pids.max == 33


def test_unchanged_values_read_anew_are_the_last_samples_objects(
        cgroups: CgroupFactory) -> None:
    """Without kept directories every file is parsed anew; values equal to the last read's
    are handed on as its objects, so same_values() holds (rates, the ledger and the /metrics
    rows skip an unchanged cgroup) and a changed value is new."""
    cg = cgroups.create()
    sleeper(cg)
    reader = track(CgroupReader(cgroups.layout, max_open_dirs=0))
    first = settle(reader, cg)
    again = reader.read(cg.rel)
    assert again.same_values(first) and again.monotonic_ns > first.monotonic_ns
    cg.write("pids" if hybrid(cgroups) else "unified", "pids.max", "33")
    s = reader.read(cg.rel)
    assert not s.same_values(again)
    assert s.pids is not None and s.pids.max == 33 and s.pids is not again.pids
    assert s.cpu is again.cpu and s.stat is again.stat


def test_a_cgroup_that_emptied_rereads_every_counter_and_no_unwritten_limit(
        cgroups: CgroupFactory) -> None:
    """The read after `populated 0` (the final read) takes every counter the exit may have
    moved, and a limit written before it, and leaves the other limits to the last sample."""
    cg = cgroups.create()
    key = "pids" if hybrid(cgroups) else "unified"
    p = cg.burn()
    reader = track(CgroupReader(cgroups.layout))
    for _ in range(3):
        reader.read(cg.rel)
    cg.write(key, "pids.max", "77")
    p.kill()
    p.wait(timeout=10)
    deadline = time.monotonic() + 5
    # The kernel's pids.current can still count the killed task a moment after `populated 0`
    # and its reaping (1 in one CI run, kernel 6.18): wait for both, for a fixed answer.
    while ("populated 0" not in cg.read("unified", "cgroup.events")
           or cg.read(key, "pids.current").strip() != "0"):
        assert time.monotonic() < deadline
        time.sleep(0.005)
    with files_read() as final:
        s = reader.read(cg.rel)
    assert s.populated is False
    assert {"pids.peak", "pids.events", "pids.max"} <= set(final)
    assert s.pids is not None and s.pids.max == 77 and s.pids.current == 0
    assert s.pids.peak == int(cg.read(key, "pids.peak")) >= 1
    assert s.cpu is not None and s.cpu.usage_usec == cg.cpu_usage_usec()
    if hybrid(cgroups):
        assert "memory.max_usage_in_bytes" in final
        assert not {"memory.limit_in_bytes", "cpu.cfs_quota_us", "cpu.shares"} & set(final)
        assert s.memory is not None and s.memory.peak == int(
            cg.read("memory", "memory.max_usage_in_bytes"))
        v1 = dict(ln.split() for ln in cg.read("cpu", "cpu.stat").splitlines())
        assert s.cpu.nr_periods == int(v1["nr_periods"])
    else:
        assert "memory.peak" in final and not {"memory.max", "cpu.max"} & set(final)
        assert s.memory is not None and s.memory.peak == int(cg.read(key, "memory.peak"))


def test_counters_exact_after_the_cgroup_ran(cgroups: CgroupFactory) -> None:
    cg = cgroups.create()
    if hybrid(cgroups):
        cg.write("cpu", "cpu.cfs_quota_us", "20000")  # throttling counters move while it runs
    reader = track(CgroupReader(cgroups.layout))
    first = settle(reader, cg)
    p = cg.burn(seconds=0.3)
    assert p.wait(timeout=30) == 0
    s = reader.read(cg.rel)
    assert s.cpu is not None and first.cpu is not None
    assert s.cpu.usage_usec == cg.cpu_usage_usec() > (first.cpu.usage_usec or 0)
    assert s.pids is not None and s.pids.peak == int(
        cg.read("pids" if hybrid(cgroups) else "unified", "pids.peak"))
    if hybrid(cgroups):
        v1 = dict(ln.split() for ln in cg.read("cpu", "cpu.stat").splitlines())
        assert s.cpu.nr_periods == int(v1["nr_periods"]) > 0
        assert s.cpu.nr_throttled == int(v1["nr_throttled"])
        # Idle again: the unread counters keep the kernel's values.
        idle = reader.read(cg.rel)
        assert idle.cpu is not None and idle.cpu.nr_periods == int(v1["nr_periods"])


def test_task_moved_in_rereads_peak(cgroups: CgroupFactory) -> None:
    a = cgroups.create()
    b = cgroups.create()
    p = sleeper(a)
    reader = track(CgroupReader(cgroups.layout))
    settle(reader, b)
    b.add_pid(p.pid)  # a write to b's cgroup.procs; the sleeper does not run
    s = reader.read(b.rel)
    assert s.pids is not None and s.pids.current == 1 and s.pids.peak == 1


#: Limits: change only by a write, which the reader sees on a watched directory.
LIMITS = {"memory.limit_in_bytes", "memory.soft_limit_in_bytes", "memory.memsw.limit_in_bytes",
          "cpu.cfs_quota_us", "cpu.cfs_period_us", "cpu.shares", "pids.max", "cpu.max",
          "cpu.weight", "memory.min", "memory.low", "memory.high", "memory.max",
          "memory.swap.max"}


def _reads(reader: CgroupReader, cg: TestCgroup, n: int) -> list[set[str]]:
    """The files each of n reads read."""
    reads = []
    for _ in range(n):
        with files_read() as seen:
            reader.read(cg.rel)
        reads.append(set(seen))
    return reads


def test_every_counter_read_every_n_reads(cgroups: CgroupFactory) -> None:
    cg, reader, full = idle_with_whole_read(cgroups, full_read_after_s=0)
    reads = _reads(reader, cg, FULL_READ_EVERY + 1)
    biggest = max(reads, key=len)
    # Everything of the first read but the limits of the watched directories, every N reads.
    assert set(full) - biggest <= LIMITS and set(full) & LIMITS
    assert {"pids.peak", "pids.events"} <= biggest
    if hybrid(cgroups):
        assert {"memory.oom_control", "blkio.throttle.io_serviced_recursive"} <= biggest
    assert min(len(r) for r in reads) < len(biggest)


def test_a_refresh_waits_for_its_seconds_as_well_as_its_reads(cgroups: CgroupFactory) -> None:
    # At short intervals the refresh comes after FULL_READ_AFTER_S, not after N reads.
    cg, reader, _full = idle_with_whole_read(cgroups, full_read_after_s=2.0)
    t0 = time.monotonic()
    quick = _reads(reader, cg, FULL_READ_EVERY + 2)
    assert time.monotonic() - t0 < 2.0, "too slow to test the time bound"
    assert not any("pids.peak" in r for r in quick)  # N reads, but not the seconds yet
    time.sleep(max(0.0, 2.0 - (time.monotonic() - t0)))
    later = _reads(reader, cg, 2)
    assert "pids.peak" in later[0] and "pids.peak" not in later[1]



def test_unchanged_files_share_their_parse_changed_ones_are_parsed_again(
    cgroups: CgroupFactory,
) -> None:
    # An idle cgroup's memory.stat reads the same bytes each time: the parsed result is reused
    # (the same object). A tmpfs file written by a task of the cgroup changes the bytes: the
    # next read parses them again and matches the kernel's file.
    cg = cgroups.create()
    sleeper(cg)
    reader = track(CgroupReader(cgroups.layout))
    settle(reader, cg)
    a = reader.read(cg.rel)
    b = reader.read(cg.rel)
    assert a.memory is not None and b.memory is not None
    assert b.memory.stat is a.memory.stat  # same bytes: not parsed again
    if a.pressure is not None and b.pressure == a.pressure:
        assert b.pressure is a.pressure
    shm = Path(f"/dev/shm/ca-test-memo-{os.getpid()}")
    writer = cg.spawn(["sh", "-c", f"head -c 4194304 /dev/zero > {shm}"])
    try:
        assert writer.wait(timeout=30) == 0
        c = reader.read(cg.rel)
        assert c.memory is not None and c.memory.stat is not a.memory.stat
        assert c.memory.stat["shmem"] >= a.memory.stat.get("shmem", 0) + 4 * 1024 * 1024
        kernel = cg.read("memory" if hybrid(cgroups) else "unified", "memory.stat")
        raw = {k: int(v) for k, v in (ln.split() for ln in kernel.splitlines())}
        assert c.memory.stat["shmem"] == raw["total_shmem" if hybrid(cgroups) else "shmem"]
    finally:
        shm.unlink(missing_ok=True)


def test_v1_paths_resolved_again_to_the_same_directories_keep_them(
    cgroups: CgroupFactory, monkeypatch: pytest.MonkeyPatch,
) -> None:
    # RESOLVE_TTL_S after their resolution the v1 paths are resolved again, at the next whole
    # read: the refresh of an idle cgroup. Found the same, the directories stay open and the
    # next reads are compares again (they were closed and reopened, and the next read was
    # whole as well: two whole reads and ~20 reopened fds per cgroup per minute).
    monkeypatch.setattr(v1_paths, "_RESOLVE_TTL_NS", 2_000_000_000)
    cg, reader, _full = idle_with_whole_read(cgroups, full_read_after_s=2.0)
    t0 = time.monotonic()
    quick = _reads(reader, cg, FULL_READ_EVERY + 2)
    assert time.monotonic() - t0 < 2.0, "too slow to test the time bound"
    assert quick[-1] == set()  # compares
    time.sleep(max(0.0, 2.0 - (time.monotonic() - t0)))
    refresh, *after = _reads(reader, cg, 3)
    assert "pids.peak" in refresh
    if hybrid(cgroups):
        assert "cgroup.procs" in refresh  # resolved again
    assert after == [set(), set()]
