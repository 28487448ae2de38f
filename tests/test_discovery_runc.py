"""Discovery on this machine, as root: real runc containers from a busybox-static rootfs, a
process in new pid+mnt namespaces inside a test cgroup, plain test cgroups, and a cgroup
removed and recreated at the same path."""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent.identity.discovery import Discovery
from agent.model.snapshot import WorkloadIdentity, WorkloadKind
from collectors.layout import CgroupLayout, LayoutKind
from collectors.procfs import host_namespaces, read_process
from tests.support.cgroups import CgroupFactory
from tests.support.runc import RuncContainer, RuncUnavailable, process_dead, runc_container

pytestmark = pytest.mark.root


def _host_inodes() -> dict[str, int]:
    return {k: v.ino for k, v in host_namespaces().items()}


def _ns_inode(pid: int, kind: str) -> int:
    return os.stat(f"/proc/{pid}/ns/{kind}").st_ino


@pytest.fixture
def container(cgroups: CgroupFactory) -> Iterator[RuncContainer]:
    try:
        with runc_container(cgroups.create(), annotations={"org.example.team": "infra"}) as c:
            yield c
    except RuncUnavailable as e:
        pytest.skip(f"runc cannot run here: {e}")


def test_runc_container_is_discovered(cgroups: CgroupFactory, container: RuncContainer) -> None:
    disc = Discovery(cgroups.layout)
    found = disc.scan()
    w = found[container.id]
    assert (w.kind, w.runtime, w.name, w.cgroup) == (
        WorkloadKind.CONTAINER, "runc", container.id, container.cgroup)
    assert w.init_pid == container.init_pid
    assert w.inode == os.stat(cgroups.layout.reference_root / w.cgroup.lstrip("/")).st_ino
    host = _host_inodes()
    for kind in ("net", "pid", "mnt"):
        assert w.namespaces[kind] == _ns_inode(container.init_pid, kind)
        assert w.namespaces[kind] != host[kind], kind
    assert w.labels["org.example.team"] == "infra"
    assert w.labels["bundle"] == str(container.bundle)
    # The test cgroup holding the container is a plain cgroup, and identify agrees with scan.
    parent = found[container.cgroup.rsplit("/", 1)[0]]
    assert parent.kind is WorkloadKind.CGROUP
    assert disc.identify(container.cgroup) == w


def test_containers_sharing_a_netns(cgroups: CgroupFactory) -> None:
    try:
        with runc_container(cgroups) as first, runc_container(
            cgroups, share_netns_with_pid=first.init_pid
        ) as second, runc_container(cgroups, own_netns=False) as hostnet:
            found = Discovery(cgroups.layout).scan()
            a, b, h = found[first.id], found[second.id], found[hostnet.id]
            assert a.namespaces["net"] == b.namespaces["net"] != _host_inodes()["net"]
            assert a.namespaces["pid"] != b.namespaces["pid"]
            assert h.namespaces["net"] == _host_inodes()["net"]
            assert h.namespaces["pid"] != _host_inodes()["pid"]
    except RuncUnavailable as e:
        pytest.skip(f"runc cannot run here: {e}")


def test_stopped_runc_container_has_no_init(cgroups: CgroupFactory) -> None:
    try:
        with runc_container(cgroups, args=["true"]) as c:
            deadline = time.monotonic() + 10
            while read_process(c.init_pid) is not None:
                assert time.monotonic() < deadline
                time.sleep(0.02)
            w = Discovery(cgroups.layout).scan()[c.id]
            assert (w.kind, w.runtime, w.init_pid) == (WorkloadKind.CONTAINER, "runc", None)
    except RuncUnavailable as e:
        pytest.skip(f"runc cannot run here: {e}")


def _wait_isolated(pid: int, host: dict[str, int]) -> int:
    """The pid of the first child of `pid` that lives in another pid namespace."""
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        for child in _children(pid):
            info = read_process(child)
            if info is not None and info.namespaces["pid"].ino != host["pid"]:
                return child
        time.sleep(0.01)
    raise AssertionError("unshare's child did not appear")


def _children(pid: int) -> list[int]:
    try:
        text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    except OSError:
        return []
    return [int(x) for x in text.split()]


def test_unshared_process_makes_unknown_container(cgroups: CgroupFactory) -> None:
    cg = cgroups.create()
    child_cg = cg.child("inner")
    launcher = cg.spawn(["unshare", "--pid", "--mount", "--fork", "sleep", "60"])
    host = _host_inodes()
    sleeper = _wait_isolated(launcher.pid, host)
    plain = cgroups.create()
    plain.spawn(["sleep", "60"])
    disc = Discovery(cgroups.layout)
    found = disc.scan()
    w = found[cg.rel]
    assert (w.kind, w.runtime, w.name) == (WorkloadKind.CONTAINER, "unknown", cg.name)
    assert w.init_pid == sleeper  # not the launcher, which stays in the host's namespaces
    assert w.namespaces["pid"] != host["pid"] and w.namespaces["mnt"] != host["mnt"]
    assert w.namespaces["net"] == host["net"]
    nested = found[child_cg.rel]
    assert nested.kind is WorkloadKind.CGROUP and nested.labels["parent_container"] == cg.rel
    assert found[plain.rel].kind is WorkloadKind.CGROUP
    assert found[plain.rel].runtime == ""
    assert disc.identify(cg.rel) == w


def test_recreated_cgroup_is_a_new_incarnation(cgroups: CgroupFactory) -> None:
    cg = cgroups.create("again")
    disc = Discovery(cgroups.layout)
    first: WorkloadIdentity = disc.scan()[cg.rel]
    cg.remove()
    assert disc.identify(cg.rel) is None
    assert cg.rel not in disc.scan()
    cgroups.created.remove(cg)
    cg2 = cgroups.create("again")
    assert cg2.rel == cg.rel
    second = disc.scan()[cg.rel]
    assert second.inode != first.inode
    assert second.incarnation != first.incarnation
    assert disc.identify(cg.rel) == second


def test_runc_container_cleanup_leaves_nothing(cgroups: CgroupFactory) -> None:
    try:
        with runc_container(cgroups) as c:
            dirs = dict(c.cgroup_dirs)
            pid = c.init_pid
    except RuncUnavailable as e:
        pytest.skip(f"runc cannot run here: {e}")
    assert process_dead(pid)
    assert all(not d.exists() for d in dirs.values())
    res = subprocess.run(["runc", "state", c.id], capture_output=True, text=True)
    assert res.returncode != 0
    # Hierarchies the factory does not manage (cpuset, devices, name=systemd) hold no prefix.
    for key, d in dirs.items():
        if key in ("cpuset", "devices", "name=systemd"):
            assert not d.parent.exists(), d.parent


@pytest.mark.parametrize("controller", ["cpuacct", "memory"])
def test_legacy_reference_hierarchy(cgroups: CgroupFactory, controller: str) -> None:
    """As on a v1-only host: the reference tree is a v1 hierarchy. memory sits under
    /process_api/<id> here, so its paths differ from the cgroup2 ones."""
    root = cgroups.layout.v1_root(controller)
    if root is None:
        pytest.skip(f"no v1 {controller} hierarchy on this host")
    legacy = CgroupLayout(kind=LayoutKind.LEGACY, unified=None, v1={controller: root})
    try:
        with runc_container(cgroups) as c:
            expected = "/" + str(c.cgroup_dirs[controller].relative_to(root))
            w = Discovery(legacy).scan()[c.id]
            assert (w.runtime, w.cgroup, w.init_pid) == ("runc", expected, c.init_pid)
            assert w.inode == os.stat(c.cgroup_dirs[controller]).st_ino
    except RuncUnavailable as e:
        pytest.skip(f"runc cannot run here: {e}")
