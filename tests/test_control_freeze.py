"""Freeze and thaw real test cgroups with both freezers (cgroup2 and v1), rollback, nesting."""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent.control import freeze_v1, operations
from agent.control.errors import ControlError
from agent.control.operations import Policy
from agent.control.targets import resolve_target
from agent.control.tasks import TaskInfo, tasks_of
from agent.core.exit_codes import ExitCode
from collectors.layout import LayoutKind, detect_layout
from tests.support import counter
from tests.support.cgroups import CgroupFactory, TestCgroup

LAYOUT = detect_layout()


def _needs(cg: TestCgroup, freezer: str) -> None:
    if freezer == "v2" and "unified" not in cg.dirs:
        pytest.skip("no cgroup2 tree on this host")
    if freezer == "v1" and "freezer" not in cg.dirs:
        pytest.skip("no v1 freezer hierarchy on this host")


@pytest.mark.parametrize("freezer", ["v2", "v1"])
def test_freeze_stops_counter_and_cpu_thaw_resumes(
    cgroups: CgroupFactory, tmp_path: Path, freezer: str
) -> None:
    cg = cgroups.create()
    _needs(cg, freezer)
    path = tmp_path / "count"
    counter.start_in(cg, path)
    target = resolve_target(cg.rel, LAYOUT, None)
    policy = Policy()

    res = operations.freeze(target, LAYOUT, policy, freezer=freezer)
    assert res["freezer"] == freezer and res["frozen"] is True
    state = res["state"]
    assert isinstance(state, dict) and state["frozen"] is True
    if freezer == "v2":
        assert cg.read("unified", "cgroup.freeze").strip() == "1"
        assert "frozen 1" in cg.read("unified", "cgroup.events")
    else:
        assert cg.read("freezer", "freezer.state").strip() == "FROZEN"
    counter.assert_stalled(path, cg)

    res = operations.thaw(target, LAYOUT, policy)
    assert res["frozen"] is False
    counter.assert_running(path, cg)


def test_auto_freezer_choice_on_this_layout(cgroups: CgroupFactory, tmp_path: Path) -> None:
    cg = cgroups.create()
    counter.start_in(cg, tmp_path / "count")
    target = resolve_target(cg.rel, LAYOUT, None)
    name, d = operations.choose_freezer(target, LAYOUT)
    if LAYOUT.kind is LayoutKind.UNIFIED:
        assert (name, d) == ("v2", cg.dirs["unified"])
    else:
        # The test cgroup's freezer cgroup holds exactly its processes: the v1 freezer.
        assert (name, d) == ("v1", cg.dirs["freezer"])


@pytest.mark.parametrize("freezer", ["v2", "v1"])
def test_child_of_frozen_parent_reports_frozen(
    cgroups: CgroupFactory, tmp_path: Path, freezer: str
) -> None:
    parent = cgroups.create()
    _needs(parent, freezer)
    child = parent.child("inner")
    path = tmp_path / "count"
    counter.start_in(child, path)
    policy = Policy()
    ptarget = resolve_target(parent.rel, LAYOUT, None)
    ctarget = resolve_target(child.rel, LAYOUT, None)
    operations.freeze(ptarget, LAYOUT, policy, freezer=freezer)
    try:
        state = operations.freeze_state(ctarget, LAYOUT)
        assert state["frozen"] is True
        if freezer == "v2":
            v2 = state["v2"]
            assert isinstance(v2, dict)
            # Its own cgroup.freeze is 0, yet it is frozen: the effective state counts.
            assert v2["requested"] is False and v2["frozen"] is True
            assert v2["frozen_by_ancestor"] == str(parent.dirs["unified"])
        else:
            v1 = state["v1"]
            assert isinstance(v1, dict)
            assert v1["self_freezing"] is False and v1["parent_freezing"] is True
        counter.assert_stalled(path, child)
        # Thawing the child alone cannot run it: the result says who holds it.
        res = operations.thaw(ctarget, LAYOUT, policy)
        assert res["frozen"] is True and res["held_by"]
        counter.assert_stalled(path, child, wait=0.1)
    finally:
        operations.thaw(ptarget, LAYOUT, policy)
    counter.assert_running(path, child)


def test_v2_timeout_rolls_back_and_names_stuck_tasks(
    cgroups: CgroupFactory, tmp_path: Path
) -> None:
    """A task held by the v1 freezer never reaches the cgroup2 freezer's trap: a real stuck task."""
    cg = cgroups.create()
    _needs(cg, "v2")
    _needs(cg, "v1")
    path = tmp_path / "count"
    proc = counter.start_in(cg, path)
    target = resolve_target(cg.rel, LAYOUT, None)
    freeze_v1.freeze(cg.dirs["freezer"])
    try:
        with pytest.raises(ControlError) as err:
            operations.freeze(target, LAYOUT, Policy(), freezer="v2", timeout=0.5)
        assert err.value.exit_code == ExitCode.TIMED_OUT
        # Rolled back: our write is undone.
        assert cg.read("unified", "cgroup.freeze").strip() == "0"
        stuck = err.value.details["stuck"]
        assert isinstance(stuck, list)
        assert proc.pid in [t["pid"] for t in stuck]
        # Held by the v1 freezer: uninterruptible sleep, not in the cgroup2 freezer's trap.
        assert {t["state"] for t in stuck} == {"D"}
        assert "rolled back" in err.value.message
    finally:
        freeze_v1.thaw(cg.dirs["freezer"])
    counter.assert_running(path, cg)
    assert "frozen 0" in cg.read("unified", "cgroup.events")


@pytest.fixture
def frozen_fs(tmp_path: Path) -> Iterator[Path]:
    """A loop-mounted ext4, for tasks blocked in uninterruptible sleep (fsfreeze)."""
    if os.geteuid() != 0:
        pytest.skip("needs root")
    img, mnt = tmp_path / "fs.img", tmp_path / "mnt"
    mnt.mkdir()
    subprocess.run(["truncate", "-s", "16M", str(img)], check=True)
    r = subprocess.run(["mkfs.ext4", "-q", "-F", str(img)], capture_output=True)
    if r.returncode != 0:
        pytest.skip("mkfs.ext4 not usable")
    if subprocess.run(["mount", "-o", "loop", str(img), str(mnt)]).returncode != 0:
        pytest.skip("cannot loop-mount here")
    try:
        yield mnt
    finally:
        subprocess.run(["fsfreeze", "-u", str(mnt)], capture_output=True)
        for _ in range(50):
            if subprocess.run(["umount", str(mnt)], capture_output=True).returncode == 0:
                break
            time.sleep(0.1)
        else:
            subprocess.run(["umount", "-l", str(mnt)], capture_output=True)


# Thread A writes through a shared mapping of a file on the frozen fs (ctypes: without the
# GIL) and blocks in the page fault holding the VMA's lock; the main thread then unmaps it and
# waits for that lock in uninterruptible, non-freezable sleep (__vma_start_write): neither
# freezer can park it.
_STUCK = """
import ctypes, mmap, os, sys, threading, time
f = open(sys.argv[1], "r+b"); m = mmap.mmap(f.fileno(), 4096)
addr = ctypes.addressof(ctypes.c_char.from_buffer(m))
os.system("fsfreeze -f " + sys.argv[2])
threading.Thread(target=lambda: ctypes.memset(addr, 65, 1), daemon=True).start()
time.sleep(0.5)
ctypes.CDLL(None).munmap(ctypes.c_void_p(addr), ctypes.c_size_t(4096))
"""


@pytest.mark.parametrize("freezer", ["v1", "v2"])
def test_timeout_rolls_back_with_task_in_uninterruptible_sleep(
    cgroups: CgroupFactory, tmp_path: Path, frozen_fs: Path, freezer: str
) -> None:
    cg = cgroups.create()
    _needs(cg, freezer)
    data = frozen_fs / "data"
    data.write_bytes(b"\0" * 4096)
    proc = cg.spawn(["python3", "-c", _STUCK, str(data), str(frozen_fs)])
    deadline = time.monotonic() + 10
    while sum(t.state == "D" for t in _tasks(proc.pid)) < 2:
        assert time.monotonic() < deadline, "workload never blocked"
        time.sleep(0.05)
    target = resolve_target(cg.rel, LAYOUT, None)
    try:
        with pytest.raises(ControlError) as err:
            operations.freeze(target, LAYOUT, Policy(), freezer=freezer, timeout=1.0)
        assert err.value.exit_code == ExitCode.TIMED_OUT
        if freezer == "v2":
            assert cg.read("unified", "cgroup.freeze").strip() == "0"
        else:
            assert cg.read("freezer", "freezer.state").strip() == "THAWED"
        stuck = err.value.details["stuck"]
        assert isinstance(stuck, list) and stuck
        assert all(t["pid"] == proc.pid for t in stuck)
        assert "D" in {t["state"] for t in stuck}
    finally:
        subprocess.run(["fsfreeze", "-u", str(frozen_fs)], capture_output=True)
        try:
            proc.wait(timeout=10)
        finally:
            proc.kill()
            proc.wait()
    assert operations.freeze_state(target, LAYOUT)["frozen"] is False


def _tasks(pid: int) -> list[TaskInfo]:
    return tasks_of([pid])
