"""procfs reader on the real /proc: own process, a process with a hostile name, a vanished pid,
a process in a new network namespace; parsers fed arbitrary text never raise."""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest
from hypothesis import given
from hypothesis import strategies as st

from collectors.procfs import (
    NS_KINDS,
    NamespaceId,
    boot_id,
    boot_time,
    host_namespaces,
    iter_pids,
    parse_cgroup,
    parse_stat,
    parse_status_uid,
    read_process,
    read_processes,
    start_time_s,
)
from tests.support.cgroups import own_cgroups

WEIRD = "a) b (c) :d"  # comm keeps at most 15 bytes: this is 11


def _ns(pid: int | str, kind: str) -> NamespaceId:
    st = os.stat(f"/proc/{pid}/ns/{kind}")
    return NamespaceId(st.st_dev, st.st_ino)


def test_own_process() -> None:
    me = read_process(os.getpid())
    assert me is not None
    assert me.pid == os.getpid() and me.ppid == os.getppid() and me.uid == os.getuid()
    assert me.name == Path("/proc/self/comm").read_text().rstrip("\n")
    assert dict(me.cgroups) == own_cgroups()
    btime = boot_time()
    assert btime is not None
    assert abs(start_time_s(me, btime) - psutil.Process().create_time()) < 1.0
    for kind in NS_KINDS:
        if os.path.exists(f"/proc/self/ns/{kind}"):
            assert me.namespaces[kind] == _ns("self", kind)


@contextlib.contextmanager
def _child_in_new_namespaces() -> Iterator[int]:
    """A child in its own net, uts and ipc namespaces (unshare needs root)."""
    if os.geteuid() != 0:
        pytest.skip("needs root: unshare --net --uts --ipc")
    proc = subprocess.Popen(["unshare", "--net", "--uts", "--ipc", "sleep", "60"])
    try:
        deadline = time.monotonic() + 5
        while _ns(proc.pid, "net") == _ns("self", "net"):
            assert time.monotonic() < deadline, "unshare did not take effect"
            time.sleep(0.01)
        yield proc.pid
    finally:
        proc.kill()
        proc.wait()


def test_host_namespaces_are_not_a_childs_new_ones() -> None:
    """The host's namespaces are the ones the test runs in, not those of a process that made
    its own (pid 1's links are EACCES even to root on some hosts, so compare with a child)."""
    host = host_namespaces()
    me = read_process(os.getpid())
    assert me is not None
    assert set(host) >= {"mnt", "net", "pid", "user", "uts", "ipc", "cgroup"}
    with _child_in_new_namespaces() as pid:
        child = read_process(pid)
        assert child is not None
        for kind in ("net", "uts", "ipc"):
            assert child.namespaces[kind] != host[kind] == me.namespaces[kind]
        for kind in ("mnt", "pid", "user"):
            assert child.namespaces[kind] == host[kind]


def test_host_namespaces_prefer_pid1_and_fall_back_per_kind(tmp_path: Path) -> None:
    """A proc root whose pid 1 is the child in new namespaces: its links win where readable;
    where pid 1 has no link for a kind, self's stands in."""
    with _child_in_new_namespaces() as pid:
        for who, target in (("1", pid), ("self", os.getpid())):
            (tmp_path / who / "ns").mkdir(parents=True)
            for kind in ("net", "uts", "ipc"):
                if who == "1" and kind == "ipc":
                    continue  # pid 1's ipc link unreadable: fall back
                (tmp_path / who / "ns" / kind).symlink_to(f"/proc/{target}/ns/{kind}")
        host = host_namespaces(tmp_path)
        assert host["net"] == _ns(pid, "net") != _ns("self", "net")
        assert host["uts"] == _ns(pid, "uts")
        assert host["ipc"] == _ns("self", "ipc") != _ns(pid, "ipc")
        assert set(host) == {"net", "uts", "ipc"}


def test_host_namespaces_fixture_root(tmp_path: Path) -> None:
    (tmp_path / "self" / "ns").mkdir(parents=True)
    (tmp_path / "self" / "ns" / "net").write_text("")
    got = host_namespaces(tmp_path)  # no pid 1 at all: self stands in
    assert set(got) == {"net"}
    assert got["net"].ino == os.stat(tmp_path / "self" / "ns" / "net").st_ino


@pytest.fixture
def weird_process(tmp_path: Path) -> Iterator[subprocess.Popen[bytes]]:
    # comm is the basename of the executed file: a symlink named WEIRD to sleep.
    link = tmp_path / WEIRD
    link.symlink_to(shutil.which("sleep") or "/bin/sleep")
    proc = subprocess.Popen([str(link), "60"])
    try:
        deadline = time.monotonic() + 5
        while Path(f"/proc/{proc.pid}/comm").read_text().strip() != WEIRD:
            assert time.monotonic() < deadline, "exec did not happen"
            time.sleep(0.01)
        yield proc
    finally:
        proc.kill()
        proc.wait()


def test_name_with_spaces_and_parentheses(weird_process: subprocess.Popen[bytes]) -> None:
    info = read_process(weird_process.pid)
    assert info is not None
    assert info.name == WEIRD
    assert info.ppid == os.getpid()
    me = read_process(os.getpid())
    assert me is not None and info.start_ticks >= me.start_ticks
    btime = boot_time()
    assert btime is not None
    assert abs(start_time_s(info, btime) - psutil.Process(weird_process.pid).create_time()) < 1
    assert weird_process.pid in read_processes()


def test_vanished_pid_is_none() -> None:
    proc = subprocess.Popen(["true"])
    proc.wait()  # reaped: the pid is gone
    assert read_process(proc.pid) is None
    pid_max = int(Path("/proc/sys/kernel/pid_max").read_text())
    assert read_process(pid_max + 1) is None
    assert read_process(123, proc_root=Path("/nonexistent")) is None


def test_iter_pids() -> None:
    pids = iter_pids()
    assert os.getpid() in pids and pids == sorted(pids)
    assert all(isinstance(p, int) for p in pids)
    assert iter_pids(Path("/nonexistent")) == []


@pytest.mark.root
def test_process_in_new_net_namespace() -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root: unshare --net")
    proc = subprocess.Popen(["unshare", "--net", "sleep", "60"])
    try:
        deadline = time.monotonic() + 5
        while True:
            info = read_process(proc.pid)
            # unshare(2) happens before exec: wait for both, the new namespace and "sleep"
            if (
                info is not None
                and info.namespaces["net"] != _ns("self", "net")
                and info.name == "sleep"
            ):
                break
            assert time.monotonic() < deadline, "unshare did not exec sleep in a new netns"
            time.sleep(0.01)
        assert info.namespaces["net"] == _ns(proc.pid, "net")
        assert info.namespaces["mnt"] == _ns("self", "mnt")
    finally:
        proc.kill()
        proc.wait()


def test_boot_facts() -> None:
    bid = boot_id()
    assert bid is not None and re.fullmatch(r"[0-9a-f-]{36}", bid)
    btime = boot_time()
    assert btime is not None and abs(btime - psutil.boot_time()) <= 1
    assert boot_time(Path("/nonexistent")) is None and boot_id(Path("/nonexistent")) is None


# --- parsers against odd input ---------------------------------------------------------------


def test_parse_stat_odd_names() -> None:
    rest = " ".join(["S", "7"] + ["0"] * 17 + ["4242"] + ["0"] * 30)
    assert parse_stat(f"12 ((sd-pam)) {rest}") == ("(sd-pam)", 7, 4242)
    assert parse_stat(f"12 (a) S 1 (b)) {rest}") == ("a) S 1 (b)", 7, 4242)
    assert parse_stat(f"12 () {rest}") == ("", 7, 4242)
    assert parse_stat("12 (x) S 1") is None
    assert parse_stat("garbage") is None


def test_parse_cgroup_forms() -> None:
    text = "12:cpu,cpuacct:/a\n4:memory:/process_api/x\n1:name=systemd:/s\n0::/u\nbad\n"
    assert parse_cgroup(text) == {
        "cpu": "/a", "cpuacct": "/a", "memory": "/process_api/x", "name=systemd": "/s",
        "unified": "/u",
    }
    assert parse_status_uid("Name:\tx\nUid:\t1000\t1000\t0\t0\n") == 1000
    assert parse_status_uid("Uid:\tzz\n") is None and parse_status_uid("") is None


@given(st.text())
def test_parsers_never_raise(text: str) -> None:
    r = parse_stat(text)
    assert r is None or isinstance(r[0], str)
    assert isinstance(parse_cgroup(text), dict)
    u = parse_status_uid(text)
    assert u is None or u >= 0
