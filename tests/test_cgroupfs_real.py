"""CgroupReader on real cgroups of this machine (root; test cgroups from the factory).

On this hybrid host CPU usage comes from cgroup2 cpu.stat and memory/pids/freezer from the v1
hierarchies; the tests compare the reader with the very files those figures come from.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from collectors.cgroupfs import CgroupReader
from collectors.layout import LayoutKind
from collectors.samples import UNLIMITED
from tests.support.cgroups import CgroupFactory, TestCgroup
from tests.support.tracked import track

pytestmark = pytest.mark.root

HOLD = (
    "import sys, time\n"
    "buf = bytearray(32 * 1024 * 1024)\n"
    "for i in range(0, len(buf), 4096): buf[i] = 1\n"
    "print('ready', flush=True)\n"
    "time.sleep(300)\n"
)


def usage_file(cg: TestCgroup) -> int:
    return cg.cpu_usage_usec()


def wait_for(pred: object, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():  # type: ignore[operator]
            return
        time.sleep(0.02)
    raise AssertionError("condition not reached")


def holder(cg: TestCgroup) -> subprocess.Popen[bytes]:
    p = cg.spawn([sys.executable, "-c", HOLD], stdout=subprocess.PIPE)
    assert p.stdout is not None and p.stdout.readline().strip() == b"ready"
    return p


def test_cpu_usage_equals_kernel_counter(cgroups: CgroupFactory) -> None:
    cg = cgroups.create()
    reader = track(CgroupReader(cgroups.layout))
    before = reader.read(cg.rel)
    assert before.cpu is not None and before.cpu.usage_usec == usage_file(cg)
    p = cg.burn(seconds=0.3)
    assert p.wait(timeout=30) == 0
    wait_for(lambda: not cg.pids())
    first = reader.read(cg.rel)
    kernel = usage_file(cg)
    second = reader.read(cg.rel)
    assert first.cpu is not None and second.cpu is not None and before.cpu.usage_usec is not None
    # Finished burner: the counter is still, and the reader reports exactly the kernel's value.
    assert first.cpu.usage_usec == kernel == second.cpu.usage_usec
    delta = kernel - before.cpu.usage_usec
    assert delta >= 200_000  # ~0.3 s burnt
    assert first.cpu.user_usec is not None and first.cpu.system_usec is not None
    # The agent's own process sits elsewhere: the delta is the burner's alone.
    if cgroups.layout.kind is not LayoutKind.UNIFIED:
        acct_usec = int(cg.read("cpuacct", "cpuacct.usage")) // 1000
        assert abs(acct_usec - kernel) < 50_000  # same CPU time seen by cpuacct (ns -> µs)


def test_running_burner_is_bracketed_by_kernel_reads(cgroups: CgroupFactory) -> None:
    cg = cgroups.create()
    reader = track(CgroupReader(cgroups.layout))
    cg.burn()
    values = []
    for _ in range(5):
        lo = usage_file(cg)
        s = reader.read(cg.rel)
        hi = usage_file(cg)
        assert s.cpu is not None and s.cpu.usage_usec is not None
        assert lo <= s.cpu.usage_usec <= hi
        values.append(s.cpu.usage_usec)
        time.sleep(0.05)
    assert values == sorted(values) and values[-1] > values[0]


def test_memory_and_pids_match_their_files(cgroups: CgroupFactory) -> None:
    cg = cgroups.create()
    hybrid = cgroups.layout.kind is not LayoutKind.UNIFIED
    mem_key = "memory" if hybrid else "unified"
    pids_key = "pids" if hybrid else "unified"
    if hybrid:
        cg.write("memory", "memory.limit_in_bytes", str(512 << 20))
    else:
        cg.write("unified", "memory.max", str(512 << 20))
    cg.write(pids_key, "pids.max", "50")
    p = holder(cg)
    reader = track(CgroupReader(cgroups.layout))
    usage_name = "memory.usage_in_bytes" if hybrid else "memory.current"
    for _ in range(20):  # the kernel may move a page between two reads; retry until still
        s = reader.read(cg.rel, member_pid=p.pid)
        cur = int(cg.read(mem_key, usage_name))
        if s.memory is not None and s.memory.current == cur:
            break
    assert s.memory is not None and s.memory.current == cur
    assert s.memory.current >= 32 << 20
    assert s.memory.max == 512 << 20
    assert s.memory.stat["anon"] >= 32 << 20
    if hybrid:
        peak = int(cg.read("memory", "memory.max_usage_in_bytes"))
        assert s.memory.peak == peak and s.memory.low == UNLIMITED
        oom = dict(ln.split() for ln in cg.read("memory", "memory.oom_control").splitlines())
        assert s.memory.events["oom_kill"] == int(oom["oom_kill"])
        root = cgroups.layout.v1_root("memory")
        assert root is not None
        assert s.v1_paths["memory"] == "/" + str(cg.dir("memory").relative_to(root))
    assert s.pids is not None
    assert s.pids.current == int(cg.read(pids_key, "pids.current")) == 1
    assert s.pids.max == 50
    # Without a member pid (found through cgroup.procs) the answer is the same.
    again = track(CgroupReader(cgroups.layout)).read(cg.rel)
    assert again.v1_paths == s.v1_paths and again.pids is not None and again.pids.max == 50


def test_empty_cgroup_v1_paths_found(cgroups: CgroupFactory) -> None:
    if cgroups.layout.kind is LayoutKind.UNIFIED:
        pytest.skip("v1 paths exist on hybrid and legacy hosts only")
    cg = cgroups.create()
    reader = track(CgroupReader(cgroups.layout))
    paths = reader.v1_paths(cg.rel)
    for key in ("memory", "pids", "freezer", "cpu", "blkio"):
        root = cgroups.layout.v1_root(key)
        assert root is not None
        assert paths[key] == "/" + str(cg.dir(key).relative_to(root)), key
    s = reader.read(cg.rel)
    assert s.memory is not None and s.memory.current == int(
        cg.read("memory", "memory.usage_in_bytes")
    )


def test_vanished_between_listing_and_reading(cgroups: CgroupFactory) -> None:
    cg = cgroups.create()
    reader = track(CgroupReader(cgroups.layout))
    assert not reader.read(cg.rel).vanished  # its directories are now kept open
    parent = cg.ref_dir.parent
    listed = [e.name for e in os.scandir(parent) if e.is_dir()]
    assert cg.name in listed
    cg.remove()
    s = reader.read(cg.rel)
    assert s.vanished and s.cpu is None and s.memory is None
    # A fresh reader (nothing cached) says the same.
    assert track(CgroupReader(cgroups.layout)).read(cg.rel).vanished


def test_recreated_cgroup_is_a_new_incarnation(cgroups: CgroupFactory) -> None:
    cg = cgroups.create("again")
    reader = track(CgroupReader(cgroups.layout))
    first = reader.read(cg.rel)
    cg.remove()
    cg2 = cgroups.create("again")
    assert cg2.rel == cg.rel
    second = reader.read(cg2.rel)
    assert not second.vanished and second.inode != first.inode
    assert second.inode == os.stat(cg2.ref_dir).st_ino
    assert second.cpu is not None and second.cpu.usage_usec == usage_file(cg2)


def _frozen(reader: CgroupReader, rel: str) -> bool | None:
    return reader.read(rel).frozen


def test_frozen_via_v1_freezer(cgroups: CgroupFactory) -> None:
    if "freezer" not in cgroups.bases:
        pytest.skip("no v1 freezer hierarchy on this host")
    cg = cgroups.create()
    cg.spawn(["sleep", "300"])
    reader = track(CgroupReader(cgroups.layout))
    assert reader.read(cg.rel).frozen is False
    cg.write("freezer", "freezer.state", "FROZEN")
    wait_for(lambda: cg.read("freezer", "freezer.state").strip() == "FROZEN")
    assert reader.read(cg.rel).frozen is True
    cg.write("freezer", "freezer.state", "THAWED")
    wait_for(lambda: cg.read("freezer", "freezer.state").strip() == "THAWED")
    assert reader.read(cg.rel).frozen is False


def test_frozen_via_cgroup_freeze(cgroups: CgroupFactory) -> None:
    cg = cgroups.create()
    if not (cg.dir("unified") / "cgroup.freeze").exists():
        pytest.skip("no cgroup.freeze on this host")
    cg.spawn(["sleep", "300"])
    reader = track(CgroupReader(cgroups.layout))
    cg.write("unified", "cgroup.freeze", "1")
    wait_for(lambda: "frozen 1" in cg.read("unified", "cgroup.events"))
    s = reader.read(cg.rel)
    assert s.frozen is True and s.populated is True
    cg.write("unified", "cgroup.freeze", "0")
    wait_for(lambda: "frozen 0" in cg.read("unified", "cgroup.events"))
    assert reader.read(cg.rel).frozen is False


def test_host_root_reads(cgroups: CgroupFactory) -> None:
    reader = track(CgroupReader(cgroups.layout))
    s = reader.read("/")
    assert not s.vanished and s.inode == os.stat(cgroups.layout.reference_root).st_ino
    assert s.cpu is not None and s.cpu.usage_usec is not None and s.cpu.usage_usec > 0
    if Path("/proc/pressure/cpu").exists():
        assert s.pressure is not None and s.pressure.cpu is not None
    reader.close()
    assert not reader.read("/").vanished  # reopens after close()


def test_unified_path_over_the_real_cgroup2_mount(cgroups: CgroupFactory) -> None:
    """The unified reading code on real kernfs: this host's cgroup2 has no controllers, so
    cgroup.controllers is empty and only core files, events and PSI are read."""
    if cgroups.layout.unified is None:
        pytest.skip("no cgroup2 mount")
    from collectors.layout import CgroupLayout

    cg = cgroups.create()
    cg.burn(seconds=0.2).wait(timeout=30)
    wait_for(lambda: not cg.pids())
    reader = track(CgroupReader(CgroupLayout(LayoutKind.UNIFIED, cgroups.layout.unified)))
    s = reader.read(cg.rel)
    assert not s.vanished and s.inode == os.stat(cg.dir("unified")).st_ino
    assert s.cpu is not None and s.cpu.usage_usec == usage_file(cg) >= 100_000
    controllers = cg.read("unified", "cgroup.controllers").split()
    if "memory" not in controllers:
        assert s.memory is None
    if "pids" not in controllers:
        assert s.pids is None
    assert s.populated is False and s.frozen is False
    assert s.stat["nr_descendants"] == 0


def test_reading_while_cgroups_are_removed(cgroups: CgroupFactory) -> None:
    """rmdir racing with reads: every answer is a sample (vanished or not), never an error."""
    import threading

    cgs = [cgroups.create() for _ in range(40)]
    reader = track(CgroupReader(cgroups.layout))
    for cg in cgs:
        assert not reader.read(cg.rel).vanished  # directories now kept open

    def remove_all() -> None:
        for cg in cgs:
            cg.remove()

    t = threading.Thread(target=remove_all)
    t.start()
    seen_vanished = 0
    while t.is_alive():
        for cg in cgs:
            s = reader.read(cg.rel)
            seen_vanished += s.vanished
            if not s.vanished:
                assert s.inode is not None
    t.join()
    for cg in cgs:
        assert reader.read(cg.rel).vanished
    assert seen_vanished > 0
