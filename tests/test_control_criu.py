"""Checkpoint and restore with a real CRIU (tests/setup/install-criu.sh provides one).

Skips, with the reason, only where no working CRIU can be had. Restored processes land in the
test cgroups, so the cgroup factory kills them and removes the cgroups afterwards.
"""

from __future__ import annotations

import tarfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent.control import criu, operations
from agent.control.checkpoints import CheckpointStore
from agent.control.errors import ControlError
from agent.control.operations import Policy
from agent.control.targets import resolve_target
from agent.core.exit_codes import ExitCode
from collectors.layout import detect_layout
from tests.conftest import IS_ROOT
from tests.support import counter
from tests.support.cgroups import CgroupFactory, TestCgroup

LAYOUT = detect_layout()


@pytest.fixture(scope="module")
def criu_info() -> criu.CriuInfo:
    if not IS_ROOT:
        pytest.skip("needs root: CRIU dumps need CAP_SYS_ADMIN")
    info = criu.find_criu()
    if not info.ok:
        pytest.skip(f"no working CRIU: {info.error}")
    return info


@pytest.fixture
def store(tmp_path: Path) -> Iterator[CheckpointStore]:
    yield CheckpointStore(tmp_path / "state")


def _first_value_after(path: Path, sentinel: str = "restored?") -> int:
    """Mark the file, then wait for the next value the (restored) counter writes."""
    deadline = time.monotonic() + 10
    while True:
        text = path.read_text()
        if text != sentinel:
            return int(text)
        assert time.monotonic() < deadline, "restored counter never wrote"
        time.sleep(0.005)


def _counter_at_least(cg: TestCgroup, path: Path, n: int, **kw: bool | float) -> None:
    counter.start_in(cg, path, **kw)
    while counter.read_counter(path) < n:
        time.sleep(0.02)


def test_checkpoint_restore_continues_from_checkpointed_value(
    criu_info: criu.CriuInfo, cgroups: CgroupFactory, tmp_path: Path, store: CheckpointStore
) -> None:
    cg = cgroups.create()
    path = tmp_path / "count"
    _counter_at_least(cg, path, 20, tick=0.02)
    original = cg.procs[0]
    target = resolve_target(cg.rel, LAYOUT, None)
    steps: list[str] = []
    res = criu.checkpoint(criu_info, target, LAYOUT, Policy(), store, progress=steps.append)
    assert steps and "process tree: root" in steps[0]
    # Without --leave-running the dump ends the workload.
    assert original.wait(timeout=10) == -9
    assert cg.pids() == []
    value = counter.read_counter(path)
    meta = store.load(str(res["id"]))
    assert meta["root_pid"] == original.pid and meta["cgroup"] == cg.rel
    assert meta["criu"]["version"] == criu_info.version
    assert [p["pid"] for p in meta["processes"]] == [original.pid]
    assert any(Path(str(res["path"]), "images").glob("*.img"))

    path.write_text("restored?")
    out = criu.restore(criu_info, store, str(res["id"]), LAYOUT)
    first = _first_value_after(path)
    # It continues from the checkpointed value (a fresh start would write 1).
    assert value < first <= value + 25, (value, first)
    assert out["root_pid"] == original.pid and out["pids"] == [original.pid]
    assert cg.pids() == [original.pid]
    if "freezer" in cg.dirs:
        assert cg.read("freezer", "cgroup.procs").split() == [str(original.pid)]
    counter.assert_running(path, cg)
    assert len(store.load(str(res["id"]))["restores"]) == 1


def test_leave_running_then_restore_after_kill(
    criu_info: criu.CriuInfo, cgroups: CgroupFactory, tmp_path: Path, store: CheckpointStore
) -> None:
    cg = cgroups.create()
    path = tmp_path / "count"
    _counter_at_least(cg, path, 10, tick=0.02, child=True)
    original = cg.procs[0]
    target = resolve_target(cg.rel, LAYOUT, None)
    v0 = counter.read_counter(path)
    res = criu.checkpoint(criu_info, target, LAYOUT, Policy(), store, leave_running=True)
    value = counter.read_counter(path)  # the original went on: checkpointed value in [v0, value]
    assert res["left_running"] is True and len(res["pids"]) == 2  # type: ignore[arg-type]
    # The original keeps running, unfrozen.
    assert original.poll() is None
    counter.assert_running(path, cg)
    assert operations.freeze_state(target, LAYOUT)["frozen"] is False
    later = counter.wait_advance(path, value + 20)

    operations.kill(target, Policy())
    original.wait(timeout=5)
    # Restore needs the checkpointed PIDs free: the killed child is reaped by its new parent
    # (not us), so wait until the kernel has released every one of them.
    deadline = time.monotonic() + 10
    while any(Path(f"/proc/{pid}").exists() for pid in res["pids"]):  # type: ignore[union-attr]
        assert time.monotonic() < deadline, f"checkpointed pids still in use: {res['pids']}"
        time.sleep(0.02)
    path.write_text("restored?")
    out = criu.restore(criu_info, store, str(res["id"]), LAYOUT)
    first = _first_value_after(path)
    # Back to the checkpointed state: lower than what the original had reached.
    assert v0 < first <= value + 1 < later, (v0, first, value, later)
    assert sorted(out["pids"]) == sorted(res["pids"])  # type: ignore[type-var]
    counter.assert_running(path, cg)


def test_restore_into_another_cgroup(
    criu_info: criu.CriuInfo, cgroups: CgroupFactory, tmp_path: Path, store: CheckpointStore
) -> None:
    src, dst = cgroups.create(), cgroups.create()
    path = tmp_path / "count"
    _counter_at_least(src, path, 5)
    res = criu.checkpoint(criu_info, resolve_target(src.rel, LAYOUT, None), LAYOUT, Policy(),
                          store)
    src.procs[0].wait(timeout=10)
    out = criu.restore(criu_info, store, str(res["id"]), LAYOUT, cgroup=dst.rel)
    assert out["cgroup"] == dst.rel
    assert src.pids() == [] and dst.pids() == out["pids"]
    for key in ("unified", "freezer"):
        if key in dst.dirs:
            assert dst.read(key, "cgroup.procs").split() == [str(p) for p in out["pids"]]  # type: ignore[attr-defined]
    counter.assert_running(path, dst)


def test_refused_dump_keeps_workload_running(
    criu_info: criu.CriuInfo, cgroups: CgroupFactory, tmp_path: Path, store: CheckpointStore
) -> None:
    cg = cgroups.create()
    path = tmp_path / "count"
    counter.start_in(cg, path, tcp=True)
    target = resolve_target(cg.rel, LAYOUT, None)
    with pytest.raises(ControlError) as err:
        criu.checkpoint(criu_info, target, LAYOUT, Policy(), store)
    e = err.value
    assert e.exit_code == ExitCode.FAILED
    assert e.message.startswith("criu dump failed: ")
    assert "still running" in e.message
    log = e.details["criu_log"]
    assert isinstance(log, list) and any("Error" in ln for ln in log)
    print("CRIU's reason:", e.message)
    # CRIU 4.2+ names the connection; 4.1 on kernels >= 6.16 fails earlier on any inet socket.
    assert "Connected TCP socket" in e.message or "1:16 opt" in e.message
    assert cg.procs[0].poll() is None
    assert operations.freeze_state(target, LAYOUT)["frozen"] is False
    counter.assert_running(path, cg)
    assert store.list() == []

    # The same dump with --tcp-established goes through (leaving it running).
    ok = criu.checkpoint(criu_info, target, LAYOUT, Policy(), store, leave_running=True,
                         tcp_established=True, network_lock="nftables")
    assert store.load(str(ok["id"]))["options"]["tcp_established"] is True
    counter.assert_running(path, cg)


def test_two_trees_are_refused(
    criu_info: criu.CriuInfo, cgroups: CgroupFactory, tmp_path: Path, store: CheckpointStore
) -> None:
    cg = cgroups.create()
    a = counter.start_in(cg, tmp_path / "a")
    b = counter.start_in(cg, tmp_path / "b")
    with pytest.raises(ControlError) as err:
        criu.checkpoint(criu_info, resolve_target(cg.rel, LAYOUT, None), LAYOUT, Policy(), store)
    assert f"{a.pid} (" in err.value.message and f"{b.pid} (" in err.value.message
    assert err.value.details["roots"] == sorted([a.pid, b.pid])
    assert a.poll() is None and b.poll() is None and store.list() == []


def test_list_export_remove(
    criu_info: criu.CriuInfo, cgroups: CgroupFactory, tmp_path: Path, store: CheckpointStore
) -> None:
    cg = cgroups.create()
    counter.start_in(cg, tmp_path / "count")
    tar_path = tmp_path / "out.tar"
    res = criu.checkpoint(criu_info, resolve_target(cg.rel, LAYOUT, None), LAYOUT, Policy(),
                          store, leave_running=True, export=tar_path)
    cid = str(res["id"])
    assert [c["id"] for c in store.list()] == [cid]
    with tarfile.open(tar_path) as tar:
        names = tar.getnames()
    assert f"{cid}/metadata.json" in names and any(n.endswith(".img") for n in names)
    assert res["export_bytes"] == tar_path.stat().st_size
    store.remove(cid)
    assert store.list() == []
    with pytest.raises(ControlError) as err:
        store.remove(cid)
    assert err.value.exit_code == ExitCode.NOT_FOUND
    with pytest.raises(ControlError) as err:
        store.remove("../etc")
    assert err.value.exit_code == ExitCode.USAGE
