"""Target resolution (strictly inside the root), protection, and kill, on real cgroups."""

from __future__ import annotations

import os
from pathlib import Path
from types import MappingProxyType

import pytest

from agent.control import operations
from agent.control.errors import ControlError
from agent.control.operations import Policy
from agent.control.targets import normalize_rel, resolve_target
from agent.core.exit_codes import ExitCode
from agent.model.snapshot import HostInfo, Snapshot, WorkloadIdentity, WorkloadKind, WorkloadState
from collectors.layout import detect_layout
from tests.support import counter
from tests.support.cgroups import CgroupFactory

LAYOUT = detect_layout()


@pytest.mark.parametrize("bad", ["/a/../b", "..", "/..", "a/b", "", "/x\x00y"])
def test_bad_paths_are_refused(bad: str) -> None:
    with pytest.raises(ControlError) as err:
        resolve_target(bad, LAYOUT, None)
    assert err.value.exit_code in (ExitCode.USAGE, ExitCode.NOT_FOUND)
    assert "\n" not in err.value.message


def test_outside_root_and_missing_are_refused() -> None:
    with pytest.raises(ControlError) as err:
        resolve_target("/sys/fs/cgroup-nope/x", LAYOUT, None)
    assert err.value.exit_code == ExitCode.USAGE
    with pytest.raises(ControlError) as err:
        resolve_target("/no-such-cgroup-here", LAYOUT, None)
    assert err.value.exit_code == ExitCode.NOT_FOUND
    with pytest.raises(ControlError) as err:
        resolve_target("nosuchcontainer", LAYOUT, None)
    assert err.value.exit_code == ExitCode.NOT_FOUND
    assert normalize_rel("//a/./b/") == "/a/b"


def test_absolute_filesystem_path_inside_root(cgroups: CgroupFactory) -> None:
    cg = cgroups.create()
    t = resolve_target(str(cg.ref_dir), LAYOUT, None)
    assert t.cgroup == cg.rel and t.ref_dir == cg.ref_dir


def test_symlink_is_refused(cgroups: CgroupFactory, tmp_path: Path) -> None:
    cg = cgroups.create()
    # cgroupfs cannot hold symlinks; a root that is one shows the check on a real directory tree.
    fake_root = tmp_path / "root"
    fake_root.mkdir()
    (fake_root / "link").symlink_to(cg.ref_dir)
    from agent.control.targets import safe_dir

    with pytest.raises(ControlError) as err:
        safe_dir(fake_root, "/link")
    assert "symlink" in err.value.message and err.value.exit_code == ExitCode.USAGE


def _snapshot(cg_rel: str, name: str) -> Snapshot:
    ident = WorkloadIdentity(
        id="c0ffee" * 10 + "abcd", kind=WorkloadKind.CONTAINER, runtime="runc",
        name=name, cgroup=cg_rel, inode=1,
    )
    from collectors.samples import CgroupSample

    host = HostInfo("h", "b", "m", "k", LAYOUT.kind.value, 1, 1, "0")
    state = WorkloadState(identity=ident, sample=CgroupSample.__new__(CgroupSample))
    return Snapshot(1, 0, 0, 0, host, MappingProxyType({ident.id: state}))


def test_container_name_and_id_resolve_through_snapshot(
    cgroups: CgroupFactory, tmp_path: Path
) -> None:
    cg = cgroups.create()
    counter.start_in(cg, tmp_path / "count")
    snap = _snapshot(cg.rel, "web")
    for ref in ("web", "c0ffee" * 10 + "abcd", "c0ffeec0ffee"):
        t = resolve_target(ref, LAYOUT, snap)
        assert t.cgroup == cg.rel and t.identity is not None and t.identity.name == "web"
    if "freezer" in cg.dirs:
        assert t.v1["freezer"] == cg.dirs["freezer"]
    if "memory" in cg.dirs:
        # The v1 memory path differs from the reference one here: read from /proc/<pid>/cgroup.
        assert t.v1["memory"] == cg.dirs["memory"]


def test_root_and_agent_cgroups_are_refused(cgroups: CgroupFactory, tmp_path: Path) -> None:
    root = resolve_target("/", LAYOUT, None)
    with pytest.raises(ControlError) as err:
        operations.freeze(root, LAYOUT, Policy())
    assert err.value.exit_code in (ExitCode.REFUSED, ExitCode.FAILED)
    with pytest.raises(ControlError) as err:
        operations.kill(root, Policy())
    assert err.value.exit_code == ExitCode.REFUSED

    # "The agent" is a process inside a test cgroup: its cgroup and its parent are refused.
    parent = cgroups.create()
    inner = parent.child("agent")
    agent_like = inner.spawn(["sleep", "60"])
    policy = Policy(agent_pid=agent_like.pid)
    for cg in (inner, parent):
        t = resolve_target(cg.rel, LAYOUT, None)
        with pytest.raises(ControlError) as err:
            operations.freeze(t, LAYOUT, policy)
        assert err.value.exit_code == ExitCode.REFUSED
        assert "contains the agent" in err.value.message and "--force" in err.value.message
        assert operations.freeze_state(t, LAYOUT)["frozen"] is False
    # With --force it goes through (and the sleeper is frozen, then thawed).
    t = resolve_target(inner.rel, LAYOUT, None)
    assert operations.freeze(t, LAYOUT, policy, force=True)["frozen"] is True
    assert operations.thaw(t, LAYOUT, policy)["frozen"] is False


def test_protected_names_are_refused(cgroups: CgroupFactory) -> None:
    parent = cgroups.create()
    parent.child("init.scope")
    t = resolve_target(parent.rel, LAYOUT, None)
    with pytest.raises(ControlError) as err:
        operations.freeze(t, LAYOUT, Policy())
    assert err.value.exit_code == ExitCode.REFUSED and "init.scope" in err.value.message
    svc = cgroups.create("my-db.service")
    t = resolve_target(svc.rel, LAYOUT, None)
    with pytest.raises(ControlError) as err:
        operations.kill(t, Policy(protected=("*-db.service",)))
    assert err.value.exit_code == ExitCode.REFUSED


@pytest.mark.parametrize("method", ["cgroup.kill", "signal"])
def test_kill_empties_every_hierarchy(
    cgroups: CgroupFactory, tmp_path: Path, method: str
) -> None:
    cg = cgroups.create()
    if method == "cgroup.kill" and not (cg.ref_dir / "cgroup.kill").exists():
        pytest.skip("no cgroup.kill on this kernel")
    procs = [counter.start_in(cg, tmp_path / f"c{i}", child=True) for i in range(2)]
    if "freezer" in cg.dirs:
        # A v1-frozen workload must die too (SIGKILL waits for the thaw there).
        cg.write("freezer", "freezer.state", "FROZEN")
    t = resolve_target(cg.rel, LAYOUT, None)
    before = set(cg.pids())
    assert len(before) == 4
    res = operations.kill(t, Policy(), method=method, timeout=10)
    assert res["method"] == method and set(res["killed"]) == before  # type: ignore[arg-type]
    for d in cg.dirs.values():
        assert (d / "cgroup.procs").read_text() == ""
    for p in procs:
        assert p.wait(timeout=5) == -9
    # Our own process was never touched.
    assert os.getpid() not in before


def test_shared_v1_cgroup_is_not_the_workloads(cgroups: CgroupFactory, tmp_path: Path) -> None:
    """A workload whose v1 freezer cgroup also holds someone else's process: v1 left out."""
    cg = cgroups.create()
    if "freezer" not in cg.dirs or "unified" not in cg.dirs:
        pytest.skip("needs a hybrid host")
    other = cgroups.create()
    counter.start_in(cg, tmp_path / "a")
    stranger = other.spawn(["sleep", "60"])
    # The stranger joins cg's freezer cgroup only (it stays in `other` in cgroup2).
    cg.write("freezer", "cgroup.procs", str(stranger.pid))
    t = resolve_target(cg.rel, LAYOUT, None)
    assert "freezer" not in t.v1
    assert operations.choose_freezer(t, LAYOUT)[0] == "v2"
    operations.kill(t, Policy(), method="signal")
    assert stranger.poll() is None  # never signalled


def test_thaw_of_root_is_a_no_op() -> None:
    res = operations.thaw(resolve_target("/", LAYOUT, None), LAYOUT, Policy())
    assert res["unchanged"] is True and res["frozen"] is False
