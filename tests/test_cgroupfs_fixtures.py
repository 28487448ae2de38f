"""CgroupReader over fixture trees: unified (real capture + hand-made odd cases), hybrid and
legacy (real files of this VM). Expected values are read from the fixture files themselves
with plain string code, independent of collectors/parsers.py."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from types import MappingProxyType

import pytest

from collectors.cgroup_v1 import CLK_TCK
from collectors.cgroupfs import CgroupReader
from collectors.layout import CgroupLayout, LayoutKind
from collectors.open_dirs import OpenDirs
from collectors.samples import UNLIMITED, CgroupSample
from tests.conftest import FIXTURES

UNI = FIXTURES / "unified"
HYB = FIXTURES / "hybrid"
LEG = FIXTURES / "legacy"
DELEGATED = "/delegated.slice"
DOCKER = (
    f"{DELEGATED}/system.slice/"
    "docker-4f1c2b9e8d7a6f5e4d3c2b1a0f9e8d7c6b5a4f3e2d1c0b9a8f7e6d5c4b3a2f1e.scope"
)
POD = (
    f"{DELEGATED}/kubepods.slice/kubepods-burstable.slice/"
    "kubepods-burstable-pod1d5e7a3c_4b2f_4a8e_9c1d_2e3f4a5b6c7d.slice/"
    "cri-containerd-9a8b7c6d5e4f3a2b1c0d9e8f7a6b5c4d3e2f1a0b9c8d7e6f5a4b3c2d1e0f9a8b.scope"
)
V1_KEYS = ("cpu", "cpuacct", "memory", "pids", "blkio", "freezer")


def kv(path: Path) -> dict[str, str]:
    out = {}
    for line in path.read_text().splitlines():
        parts = line.split()
        if len(parts) == 2:
            out[parts[0]] = parts[1]
    return out


def num(path: Path) -> int:
    return int(path.read_text().strip())


# -- unified --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def uni(tmp_path_factory: pytest.TempPathFactory) -> Iterator[CgroupReader]:
    layout = CgroupLayout(LayoutKind.UNIFIED, UNI / "cgroup")
    empty_proc = tmp_path_factory.mktemp("proc")
    with CgroupReader(layout, sys_dev_block=UNI / "sys_dev_block", proc_root=empty_proc) as reader:
        yield reader


def udir(path: str) -> Path:
    return UNI / "cgroup" / path.lstrip("/")


def test_unified_root_io_names_and_keyless_lines(uni: CgroupReader) -> None:
    s = uni.read("/")
    assert not s.vanished and s.inode == os.stat(UNI / "cgroup").st_ino
    assert s.io is not None
    # 11 lines in io.stat, 9 of them keyless (253:0 and the loop devices): skipped.
    assert {(d.major, d.minor, d.device) for d in s.io} == {(254, 0, "vda"), (254, 16, "vdb")}
    vda = next(d for d in s.io if d.device == "vda")
    assert (vda.rbytes, vda.wbytes, vda.rios, vda.wios, vda.dbytes, vda.dios) == (
        659989504,
        68739072,
        2918,
        222,
        192512,
        18,
    )
    assert s.stat["nr_descendants"] == int(kv(udir("/") / "cgroup.stat")["nr_descendants"])
    assert s.stat["nr_dying_subsys_memory"] == 15  # undocumented keys kept
    assert s.cpu is not None and s.cpu.usage_usec == int(kv(udir("/") / "cpu.stat")["usage_usec"])
    assert s.memory is not None and s.memory.current is None  # no memory.current at the root
    assert s.pressure is not None and s.pressure.io is not None
    assert s.pressure.io.some is not None and s.pressure.io.some.total == 827671


def test_unified_docker_scope(uni: CgroupReader) -> None:
    s = uni.read(DOCKER)
    stat = kv(udir(DOCKER) / "cpu.stat")
    assert s.cpu is not None
    assert (s.cpu.usage_usec, s.cpu.user_usec, s.cpu.system_usec) == (
        int(stat["usage_usec"]),
        int(stat["user_usec"]),
        int(stat["system_usec"]),
    )
    assert s.cpu.usage_usec > 5_000_000  # the 5.6 s burner
    # The parent enabled only memory: no cpu.max, io.stat or pids.* here.
    assert s.cpu.max_quota_usec is None and s.cpu.nr_periods is None
    assert s.io is None and s.pids is None
    assert s.memory is not None and s.memory.current == num(udir(DOCKER) / "memory.current")
    assert s.populated is True and s.frozen is False


def test_unified_k8s_pod_memory(uni: CgroupReader) -> None:
    s = uni.read(POD)
    m = s.memory
    assert m is not None
    assert m.max == 256 << 20
    assert m.current == num(udir(POD) / "memory.current")
    assert m.peak == num(udir(POD) / "memory.peak")
    stat = kv(udir(POD) / "memory.stat")
    for key in (
        "anon",
        "file",
        "kernel",
        "file_mapped",
        "inactive_file",
        "pgfault",
        "workingset_refault_file",
        "slab_reclaimable",
    ):
        assert m.stat[key] == int(stat[key]), key
    assert m.working_set == max(m.current - int(stat["inactive_file"]), 0)
    assert isinstance(m.stat, MappingProxyType)


def test_unified_oom_frozen_emptied(uni: CgroupReader) -> None:
    oom = uni.read(f"{DELEGATED}/oom-test.scope")
    assert oom.memory is not None and oom.memory.max == 32 << 20
    assert oom.memory.events["oom_kill"] == 1 and oom.memory.events["oom"] == 1
    assert uni.read(f"{DELEGATED}/frozen-test.scope").frozen is True
    emptied = uni.read(f"{DELEGATED}/emptied-test.scope")
    assert emptied.populated is False and not emptied.vanished


def test_unified_delegated_absent_files(uni: CgroupReader) -> None:
    s = uni.read(DELEGATED)
    assert not s.vanished
    assert s.cpu is not None and s.cpu.usage_usec is not None and s.cpu.max_quota_usec is None
    assert s.io is None and s.pids is None
    assert s.memory is not None and s.memory.swap_max is not None
    assert s.pressure is not None and s.pressure.supported and s.pressure.cpu is not None


def test_unified_every_cgroup_reads(uni: CgroupReader) -> None:
    n = 0
    for dirpath, _dirs, _files in os.walk(UNI / "cgroup"):
        rel = "/" + str(Path(dirpath).relative_to(UNI / "cgroup")).lstrip(".")
        s = uni.read("/" + rel.strip("/") if rel.strip("/") else "/")
        assert isinstance(s, CgroupSample) and not s.vanished, rel
        assert s.cpu is not None and s.cpu.usage_usec is not None, rel
        n += 1
    assert n >= 17


def test_unified_hand_made_odd_cases(uni: CgroupReader) -> None:
    s = uni.read("/hand-made.slice/odd-io.scope")
    assert s.io is not None
    by = {(d.major, d.minor): d for d in s.io}
    assert set(by) == {(8, 0), (259, 3)}  # keyless lines skipped
    d8 = by[(8, 0)]
    assert d8.device == "8:0"  # no /sys/dev/block entry
    assert (d8.rbytes, d8.wbytes, d8.rios, d8.wios) == (4096, 8192, 1, 2)
    assert d8.extra == {
        "cost.vrate": 99.5,
        "cost.usage": 120,
        "cost.wait": 3,
        "cost.indebt": 0,
        "cost.indelay": 0,
        "depth": 8,
        "avg_lat": 120,
        "win": 50,
    }
    d259 = by[(259, 3)]
    assert (d259.rbytes, d259.wbytes, d259.rios, d259.wios, d259.dbytes) == (10, 20, 1, 2, None)
    assert d259.extra == {"future_key": 7}
    assert s.io_totals == (4106, 8212, 2, 4)
    assert s.memory is not None
    assert s.memory.max == UNLIMITED and s.memory.high == UNLIMITED and s.memory.low == 0
    assert s.memory.peak is None and s.memory.swap_current is None  # missing files
    assert s.memory.stat["future_key"] == 1 and s.memory.events["sock_throttled"] == 0
    assert s.pids is not None and s.pids.max == UNLIMITED and s.pids.peak is None
    assert s.pids.current == 3 and s.pids.events_max == 0
    assert s.cpu is not None
    assert (s.cpu.max_quota_usec, s.cpu.max_period_usec, s.cpu.weight) == (UNLIMITED, 100000, 100)
    assert (s.cpu.nr_periods, s.cpu.nr_throttled, s.cpu.throttled_usec) == (40, 7, 1234)
    assert (s.cpu.nr_bursts, s.cpu.burst_usec) == (2, 55)
    assert s.stat["nr_subsys_future"] == 3
    p = s.pressure
    assert p is not None and p.cpu is not None and p.cpu.some is not None
    assert p.cpu.some.avg10 == 1.5 and p.cpu.some.total == 777
    assert p.cpu.full is not None and p.cpu.full.total == 12
    assert p.io is not None and p.io.some is not None and p.io.full is None
    assert p.memory is None  # memory.pressure missing


def test_unified_hand_made_garbled(uni: CgroupReader) -> None:
    s = uni.read("/hand-made.slice/garbled.scope")
    assert not s.vanished
    assert s.io is None  # truncated io.stat: no IO rather than wrong IO
    assert s.memory is not None and s.memory.current == 2048
    assert len(s.memory.stat) == 0 and s.memory.max is None
    assert s.cpu is not None and s.cpu.usage_usec == 77 and s.cpu.max_quota_usec is None
    assert s.pids is not None and s.pids.max == 64
    assert s.pressure is None  # the only PSI file does not parse


def test_unified_missing_cgroup_is_vanished(uni: CgroupReader) -> None:
    s = uni.read("/no-such.scope")
    assert s.vanished and s.inode is None and s.cpu is None
    assert uni.v1_paths("/") == {}


# -- hybrid ---------------------------------------------------------------------------------


def v1_layout(base: Path, kind: LayoutKind, v1: dict[str, str]) -> CgroupLayout:
    unified = base / "sys/fs/cgroup/unified" if kind is LayoutKind.HYBRID else None
    return CgroupLayout(
        kind, unified, MappingProxyType({c: base / "sys/fs/cgroup" / d for c, d in v1.items()})
    )


@pytest.fixture(scope="module")
def hyb() -> Iterator[CgroupReader]:
    layout = v1_layout(HYB, LayoutKind.HYBRID, {k: k for k in V1_KEYS})
    with CgroupReader(layout, sys_dev_block=HYB / "sys_dev_block",
                      proc_root=HYB / "proc") as reader:
        yield reader


def own_memory_path(base: Path) -> str:
    for line in (base / "proc/self/cgroup").read_text().splitlines():
        _id, ctrls, path = line.split(":", 2)
        if "memory" in ctrls.split(","):
            return path
    raise AssertionError("no memory line")


def hdir(key: str, rel: str) -> Path:
    return HYB / "sys/fs/cgroup" / key / rel.lstrip("/")


def check_v1_memory(s: CgroupSample, mem_dir: Path) -> None:
    m = s.memory
    assert m is not None
    assert m.current == num(mem_dir / "memory.usage_in_bytes")
    assert m.peak == num(mem_dir / "memory.max_usage_in_bytes")
    assert m.max == num(mem_dir / "memory.limit_in_bytes") == 256 << 20
    assert m.low == num(mem_dir / "memory.soft_limit_in_bytes") == 128 << 20
    stat = kv(mem_dir / "memory.stat")
    assert m.stat["anon"] == int(stat["total_rss"])
    assert m.stat["file"] == int(stat["total_cache"])
    assert m.stat["file_mapped"] == int(stat["total_mapped_file"])
    assert m.stat["file_dirty"] == int(stat["total_dirty"])
    assert m.stat["inactive_file"] == int(stat["total_inactive_file"])
    assert m.stat["pgfault"] == int(stat["total_pgfault"])
    assert m.stat["hierarchical_memory_limit"] == 256 << 20  # local-only keys kept
    assert "rss" not in m.stat and "total_rss" not in m.stat
    assert m.stat["anon"] >= 48 << 20  # the workload touched 48 MiB
    oom = kv(mem_dir / "memory.oom_control")
    assert m.events["oom_kill"] == int(oom["oom_kill"])
    assert m.events["under_oom"] == int(oom["under_oom"])
    assert m.failcnt == num(mem_dir / "memory.failcnt") == m.events["max"]
    memsw = num(mem_dir / "memory.memsw.usage_in_bytes")
    assert m.swap_current == max(memsw - m.current, 0)
    assert m.swap_max == UNLIMITED  # memsw limit left unlimited


def check_v1_cpu_limits(s: CgroupSample, cpu_dir: Path) -> None:
    c = s.cpu
    assert c is not None
    stat = kv(cpu_dir / "cpu.stat")
    assert c.nr_periods == int(stat["nr_periods"]) and c.nr_throttled == int(stat["nr_throttled"])
    assert c.nr_throttled > 0  # the burner ran under a 20 ms quota
    assert c.throttled_usec == int(stat["throttled_time"]) // 1000
    assert c.max_quota_usec == 20000 and c.max_period_usec == num(cpu_dir / "cpu.cfs_period_us")
    assert c.weight == 1 + ((512 - 2) * 9999) // 262142


def check_v1_io_pids(s: CgroupSample, blk_dir: Path, pids_dir: Path) -> None:
    assert s.io is not None and len(s.io) >= 1
    served = {}
    for line in (blk_dir / "blkio.throttle.io_service_bytes_recursive").read_text().splitlines():
        parts = line.split()
        if len(parts) == 3:
            served[(parts[0], parts[1])] = int(parts[2])
    d = s.io[0]
    dev = f"{d.major}:{d.minor}"
    assert d.rbytes == served[(dev, "Read")] and d.wbytes == served[(dev, "Write")]
    assert d.wbytes >= 4 << 20  # 4 MiB written with O_DIRECT
    assert d.dbytes == served[(dev, "Discard")]
    assert d.device != dev  # resolved through sys_dev_block
    assert s.pids is not None
    assert s.pids.current == num(pids_dir / "pids.current") and s.pids.max == 100
    assert s.pids.events_max == int(kv(pids_dir / "pids.events")["max"])


def test_hybrid_workload(hyb: CgroupReader) -> None:
    rel = "/fixture/workload"
    s = hyb.read(rel)
    assert not s.vanished and s.inode == os.stat(hdir("unified", rel)).st_ino
    mem_rel = own_memory_path(HYB) + rel
    assert s.v1_paths["memory"] == mem_rel  # found through the member's /proc/<pid>/cgroup
    assert s.v1_paths["cpu"] == rel and s.v1_paths["pids"] == rel
    check_v1_memory(s, hdir("memory", mem_rel))
    check_v1_cpu_limits(s, hdir("cpu", rel))
    check_v1_io_pids(s, hdir("blkio", rel), hdir("pids", rel))
    # CPU usage from cgroup2 cpu.stat (exact µs), not cpuacct.
    v2 = kv(hdir("unified", rel) / "cpu.stat")
    assert s.cpu is not None and s.cpu.usage_usec == int(v2["usage_usec"])
    assert s.cpu.user_usec == int(v2["user_usec"])
    assert s.populated is True and s.frozen is False
    assert s.stat["nr_descendants"] == 0
    assert s.pressure is not None and s.pressure.cpu is not None


def test_hybrid_frozen_by_v1_freezer(hyb: CgroupReader) -> None:
    rel = "/fixture/frozen"
    assert kv(hdir("unified", rel) / "cgroup.events")["frozen"] == "0"
    assert hdir("freezer", rel).joinpath("freezer.state").read_text().strip() == "FROZEN"
    assert hyb.read(rel).frozen is True
    assert hyb.read("/fixture/workload").frozen is False


def test_hybrid_empty_cgroup_found_through_own_cgroup(hyb: CgroupReader) -> None:
    rel = "/fixture/empty"
    s = hyb.read(rel)
    assert s.v1_paths["memory"] == own_memory_path(HYB) + rel
    assert s.memory is not None and s.memory.current == num(
        hdir("memory", own_memory_path(HYB) + rel) / "memory.usage_in_bytes"
    )
    assert s.populated is False


def test_hybrid_v1_paths_and_member_pid(hyb: CgroupReader) -> None:
    pids = [
        int(p)
        for p in hdir("unified", "/fixture/frozen").joinpath("cgroup.procs").read_text().split()
    ]
    paths = hyb.v1_paths("/fixture/frozen", member_pid=pids[0])
    assert paths["freezer"] == "/fixture/frozen"
    assert paths["memory"] == own_memory_path(HYB) + "/fixture/frozen"
    assert paths["cpuacct"] == "/fixture/frozen"
    # A pid that is not a member is ignored: same answer from the fallbacks.
    assert hyb.v1_paths("/fixture/frozen", member_pid=999_999_999) == paths
    assert hyb.v1_paths("/nope") == {}
    assert hyb.read("/nope").vanished


# -- legacy ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def leg() -> Iterator[CgroupReader]:
    v1 = {k: k for k in V1_KEYS} | {"cpu": "cpu,cpuacct", "cpuacct": "cpu,cpuacct"}
    layout = v1_layout(LEG, LayoutKind.LEGACY, v1)
    with CgroupReader(layout, sys_dev_block=HYB / "sys_dev_block",
                      proc_root=LEG / "proc") as reader:
        yield reader


def test_legacy_workload(leg: CgroupReader) -> None:
    rel = "/fixture/workload"
    base = LEG / "sys/fs/cgroup"
    s = leg.read(rel)
    assert not s.vanished and s.inode == os.stat(base / "cpu,cpuacct" / rel.lstrip("/")).st_ino
    acct = base / "cpu,cpuacct" / rel.lstrip("/")
    ticks = kv(acct / "cpuacct.stat")
    assert s.cpu is not None
    assert s.cpu.usage_usec == num(acct / "cpuacct.usage") // 1000
    assert s.cpu.user_usec == int(ticks["user"]) * 1_000_000 // CLK_TCK
    assert s.cpu.system_usec == int(ticks["system"]) * 1_000_000 // CLK_TCK
    check_v1_cpu_limits(s, acct)
    mem_rel = own_memory_path(LEG) + rel
    assert s.v1_paths["memory"] == mem_rel and s.v1_paths["cpuacct"] == rel
    check_v1_memory(s, base / "memory" / mem_rel.lstrip("/"))
    check_v1_io_pids(s, base / "blkio" / rel.lstrip("/"), base / "pids" / rel.lstrip("/"))
    # No cgroup2: no cgroup.events, cgroup.stat or PSI.
    assert s.populated is None and s.pressure is None and len(s.stat) == 0
    assert s.frozen is False


def test_legacy_frozen_and_empty(leg: CgroupReader) -> None:
    assert leg.read("/fixture/frozen").frozen is True
    empty = leg.read("/fixture/empty")
    assert not empty.vanished and empty.memory is not None
    assert empty.v1_paths["memory"] == own_memory_path(LEG) + "/fixture/empty"


# -- kept directory fds ---------------------------------------------------------------------


def test_open_dirs_bounded_idle_and_stale(tmp_path: Path) -> None:
    dirs = [tmp_path / f"d{i}" for i in range(3)]
    for d in dirs:
        d.mkdir()
        (d / "f").write_text("1\n")
    kept = OpenDirs(2)
    for d in dirs:
        cd = kept.get(str(d), 1)
        assert cd.read("f") == b"1\n"
        cd.close()
    assert len(kept) == 2  # the third was opened for its read only
    again = kept.get(str(dirs[0]), 2)
    assert not again.fresh and again.read("f") == b"1\n"
    # A different inode at the same path (recreated): reopened.
    stale_ino = again.ino
    dirs[0].joinpath("f").unlink()
    dirs[0].rmdir()
    dirs[0].mkdir()
    renewed = kept.get(str(dirs[0]), 3, os.stat(dirs[0]).st_ino)
    assert renewed.fresh and renewed.ino != stale_ino
    kept.sweep(3 + int(OpenDirs.IDLE_S * 1e9) + 1)
    assert len(kept) == 0
    kept.close()


SHRINK = """
import os, resource, sys
from collectors.open_dirs import OpenDirs
base = sys.argv[1]
limit = len(os.listdir("/proc/self/fd")) + 8
resource.setrlimit(resource.RLIMIT_NOFILE, (limit, resource.getrlimit(resource.RLIMIT_NOFILE)[1]))
kept = OpenDirs(10_000)
kept._cap = 10_000  # as if other code took the fds after the cap was set
got = []
for i in range(20):
    d = kept.get(f"{base}/d{i}", i + 1)  # never raises EMFILE: gives fds back instead
    got.append(d.read("f"))
    if d.emfile:
        kept.shrink(i + 1)  # what CgroupReader does after such a read
    d.close()
print(len(kept), got[-5:] == [b"x"] * 5)
"""


def run_with_dirs(script: str, tmp_path: Path, n: int) -> list[str]:
    """`script` in a fresh interpreter (it lowers its own fd limit) over n directories
    d<i> holding a file f; its printed words."""
    import subprocess
    import sys

    for i in range(n):
        (tmp_path / f"d{i}").mkdir()
        (tmp_path / f"d{i}" / "f").write_text("x")
    out = subprocess.run(
        [sys.executable, "-c", script, str(tmp_path)],
        capture_output=True,
        text=True,
        check=True,
        cwd=Path(__file__).parents[1],
    )
    return out.stdout.split()


def test_open_dirs_survive_emfile(tmp_path: Path) -> None:
    kept, last_ok = run_with_dirs(SHRINK, tmp_path, 20)
    assert 0 < int(kept) < 8 and last_ok == "True"


REGROW = """
import os, resource, sys
from collectors.open_dirs import OpenDirs
base = sys.argv[1]
limit = len(os.listdir("/proc/self/fd")) + 80
resource.setrlimit(resource.RLIMIT_NOFILE, (limit, resource.getrlimit(resource.RLIMIT_NOFILE)[1]))
kept = OpenDirs(10_000)
kept._cap = 10_000  # as if other code took the fds after the cap was set
held = [os.open("/dev/null", os.O_RDONLY) for _ in range(30)]  # fds the rest of the process holds
s = 10**9
def cycle(now):
    emfiles = 0
    for i in range(30):
        d = kept.get(f"{base}/d{i}", now + i)  # one read per cgroup, as CgroupReader does
        got = d.read("f")
        if d.emfile:  # this read lacks the file; CgroupReader then shrinks the pool
            emfiles += 1
            kept.shrink(now + i)
        else:
            assert got == b"x"
        d.close()
    return emfiles
cycle(1 * s)
after_shrink = len(kept)
cycle(2 * s)  # within REGROW_AFTER_S: no growth
same = len(kept) == after_shrink
for fd in held:  # the others' fds were a passing need (a burst of churn)
    os.close(fd)
# Then it grows into what is free, and no read runs out of fds.
later = int((3 + OpenDirs.REGROW_AFTER_S) * s)
emfiles = cycle(later) + cycle(later + s)
free = limit - len(os.listdir("/proc/self/fd"))
print(after_shrink, same, len(kept), free, emfiles)
"""


def test_open_dirs_grow_again_after_emfile_within_what_is_free(tmp_path: Path) -> None:
    after_shrink, same, regrown, free, emfiles = run_with_dirs(REGROW, tmp_path, 30)
    assert same == "True" and emfiles == "0"
    # Grown back past what the shrink left, and fds still free.
    assert int(regrown) > int(after_shrink) and int(free) >= 10
