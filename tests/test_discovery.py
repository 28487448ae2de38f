"""Discovery: path rules over every runtime's path forms, runtime state files, and a whole scan
over a fixture cgroup tree with a fixture procfs (real directories, real inodes, namespace
files shared by hard links the way nsfs shares inodes). Real cgroups: walk, inode, read_procs."""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agent.identity.classify import classify, systemd_unescape
from agent.identity.discovery import Discovery
from agent.model.snapshot import WorkloadKind
from collectors import cgroup_tree
from collectors.cgroup_tree import read_procs, walk
from collectors.layout import CgroupLayout, LayoutKind
from collectors.runtime_state import (
    StateCache,
    parse_crun_status,
    parse_runc_state,
    read_runtime_states,
    read_state_dir,
)
from tests.conftest import FIXTURES
from tests.support.cgroups import CgroupFactory

FIX = FIXTURES / "discovery"
CASES = json.loads((FIX / "paths.json").read_text())["cases"]

P = "3d74096d6bc536f509d69a577d3c70118072187505aa660f36afe8fe12e807f2"
D = "4f1c2b9e8d7a6f5e4d3c2b1a0f9e8d7c6b5a4f3e2d1c0b9a8f7e6d5c4b3a2f1e"
C = "9a8b7c6d5e4f3a2b1c0d9e8f7a6b5c4d3e2f1a0b9c8d7e6f5a4b3c2d1e0f9a8b"
E = "e1e2e3e4e5e6e7e8e9e0e1e2e3e4e5e6e7e8e9e0e1e2e3e4e5e6e7e8e9e0e1e2"
U = "1d5e7a3c-4b2f-4a8e-9c1d-2e3f4a5b6c7d"
POD = f"/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{U.replace('-', '_')}.slice"
RUNC_ID = "ca-test-eb8356dff6eb"
RUNC_CG = f"/ca-test-rx-11259-7c0dfb89/cg-e88749be/{RUNC_ID}"


# --- path rules -----------------------------------------------------------------------------


@pytest.mark.parametrize("case", CASES, ids=[c["path"][-60:] for c in CASES])
def test_classify_path_forms(case: dict[str, object]) -> None:
    got = classify(str(case["path"]))
    assert got.kind.value == case["kind"]
    assert got.runtime == case["runtime"]
    assert got.id == case["id"]
    assert got.name == case["name"]
    assert got.pod_uid == case["pod_uid"]
    assert got.qos_class == case["qos_class"]
    assert got.role == case["role"]
    assert got.parent_container == case["parent_container"]


def test_fixture_covers_every_runtime_and_odd_case() -> None:
    runtimes = {c["runtime"] for c in CASES if c["kind"] == "container"}
    assert {"docker", "containerd", "cri-o", "podman", "lxc", "systemd-nspawn"} <= runtimes
    roles = {c["role"] for c in CASES}
    assert {"monitor", "pod", "nested", "service"} <= roles
    qos = {c["qos_class"] for c in CASES}
    assert {"burstable", "besteffort", "guaranteed"} <= qos


def test_systemd_unescape() -> None:
    assert systemd_unescape(r"my\x2dbox\x2e1") == "my-box.1"
    assert systemd_unescape("plain") == "plain"


def test_classify_never_fails_on_odd_paths() -> None:
    for path in ("", "/", "//", "/a//b/", "/\x00", "/" + "x" * 5000, "/docker/" + "g" * 64):
        got = classify(path)
        assert got.kind in WorkloadKind


# --- runtime state files --------------------------------------------------------------------


def _copy_states(tmp: Path, cgroot: Path) -> dict[str, Path]:
    """The fixture state roots, with @CGROOT@ pointing at the fixture cgroup tree."""
    roots = {}
    for name, key in (("runc", "runc"), ("crun", "crun"), ("containerd", "runc:k8s.io")):
        dst = tmp / "run" / name
        shutil.copytree(FIX / "states" / name, dst)
        for f in dst.rglob("*"):
            if f.is_file():
                data = f.read_bytes().replace(b"@CGROOT@", str(cgroot).encode())
                f.write_bytes(data)
        roots[key] = dst
    (tmp / "run" / "runc" / "emptydir").mkdir()
    return roots


def test_read_runtime_states_tolerates_garbage(tmp_path: Path) -> None:
    roots = _copy_states(tmp_path, Path("/cg"))
    states = read_runtime_states({**roots, "crun:missing": tmp_path / "nope"})
    assert set(states) == {RUNC_ID, "stale1", "byinit", "garbage-types", P, C, E}
    runc = states[RUNC_ID]
    assert runc.runtime == "runc" and runc.init_pid == 11274 and runc.init_start_ticks == 101216
    assert runc.bundle == "/tmp/ca-test-runc-sample/bundle"
    assert dict(runc.annotations) == {"org.example/a": "b"}
    assert runc.cgroup_paths[""] == f"/cg{RUNC_CG}"
    crun = states[P]
    assert crun.runtime == "crun" and crun.init_pid == 2201
    assert crun.cgroup_path == f"/machine.slice/libpod-{P}.scope/container"
    assert crun.annotations["io.container.manager"] == "libpod"
    assert states[C].source == "runc:k8s.io" and states[C].runtime == "runc"
    assert states["garbage-types"].init_pid is None


def test_state_cache_rereads_changed_files(tmp_path: Path) -> None:
    roots = _copy_states(tmp_path, Path("/cg"))
    cache: StateCache = {}
    first = read_runtime_states(roots, cache)
    assert read_runtime_states(roots, cache) == first
    f = roots["runc"] / "byinit" / "state.json"
    doc = json.loads(f.read_text())
    doc["init_process_pid"] = 4242
    f.write_text(json.dumps(doc))
    assert read_runtime_states(roots, cache)["byinit"].init_pid == 4242
    shutil.rmtree(roots["runc"] / "byinit")
    assert "byinit" not in read_runtime_states(roots, cache)
    assert all("byinit" not in str(k) for k in cache)


# --- a whole scan over a fixture tree and a fixture procfs ----------------------------------

NS_KINDS = ("cgroup", "ipc", "mnt", "net", "pid", "pid_for_children", "time", "user", "uts")


class FakeProc:
    """A procfs tree: pid dirs with stat/status/cgroup, ns/* hard-linked per namespace set."""

    def __init__(self, root: Path) -> None:
        self.root = root
        (root / ".ns").mkdir(parents=True)
        self.members: dict[str, list[int]] = {}

    def ns_file(self, ident: str) -> Path:
        f = self.root / ".ns" / ident
        if not f.exists():
            f.write_text(ident)
        return f

    def add(
        self, pid: int, name: str, cgroup: str, *, ppid: int = 1, start: int | None = None,
        ns: dict[str, str] | None = None,
    ) -> None:
        d = self.root / str(pid)
        (d / "ns").mkdir(parents=True)
        start = pid if start is None else start
        rest = " ".join(["S", str(ppid)] + ["0"] * 17 + [str(start)] + ["0"] * 30)
        (d / "stat").write_text(f"{pid} ({name}) {rest}\n")
        (d / "status").write_text(f"Name:\t{name}\nUid:\t0\t0\t0\t0\n")
        (d / "cgroup").write_text(f"0::{cgroup}\n")
        self.members.setdefault(cgroup, []).append(pid)
        for kind in NS_KINDS:
            os.link(self.ns_file((ns or {}).get(kind, f"host-{kind}")), d / "ns" / kind)


def _isolated(tag: str, kinds: tuple[str, ...] = ("cgroup", "ipc", "mnt", "net", "pid", "uts"),
              ) -> dict[str, str]:
    return {k: f"{tag}-{k}" for k in kinds}


TREE = [
    "/init.scope", "/system.slice", "/system.slice/cron.service", f"/system.slice/docker-{D}.scope",
    f"/system.slice/docker-{D}.scope/init.scope", "/kubepods.slice",
    "/kubepods.slice/kubepods-burstable.slice", POD, f"{POD}/cri-containerd-{C}.scope",
    f"{POD}/cri-containerd-{E}.scope", "/machine.slice", f"/machine.slice/libpod-{P}.scope",
    f"/machine.slice/libpod-{P}.scope/container", f"/machine.slice/libpod-conmon-{P}.scope",
    "/ca-test-rx-11259-7c0dfb89", "/ca-test-rx-11259-7c0dfb89/cg-e88749be", RUNC_CG,
    "/custom", "/custom/byinit", "/ca-test", "/ca-test/unknown1", "/ca-test/unknown1/child",
    "/ca-test/netonly", "/ca-test/plain",
]


@pytest.fixture
def fake_host(tmp_path: Path) -> Iterator[tuple[Discovery, Path, Path]]:
    cg = tmp_path / "cgroup"
    for p in TREE:
        (cg / p.lstrip("/")).mkdir(parents=True)
    proc = FakeProc(tmp_path / "proc")
    proc.add(1, "systemd", "/init.scope", ppid=0)
    proc.add(2, "kthreadd", "/", ppid=0)
    proc.add(25, "kdevtmpfs", "/", ppid=2, ns={"mnt": "kdev-mnt"})
    proc.add(4200, "agent", "/system.slice/cron.service")
    os.symlink("4200", proc.root / "self")
    proc.add(6000, "nginx", f"/system.slice/docker-{D}.scope", ns=_isolated("docker"))
    proc.add(5990, "nginx: worker) (x", f"/system.slice/docker-{D}.scope", start=6100,
             ns=_isolated("docker"))
    proc.add(5000, "pause", f"{POD}/cri-containerd-{C}.scope", ns=_isolated("pod"))
    proc.add(5100, "app", f"{POD}/cri-containerd-{E}.scope", ns=_isolated("pod"))
    proc.add(2200, "conmon", f"/machine.slice/libpod-conmon-{P}.scope")
    proc.add(2201, "sleep", f"/machine.slice/libpod-{P}.scope/container", ns=_isolated("podman"))
    proc.add(11274, "sleep", RUNC_CG, start=101216, ns=_isolated("runc"))
    proc.add(3001, "cron", "/system.slice/cron.service", start=999)  # stale1's pid, reused
    proc.add(3100, "init", "/custom/byinit", ns=_isolated("byinit"))
    proc.add(4000, "unshare", "/ca-test/unknown1")
    proc.add(4001, "sleep", "/ca-test/unknown1", ppid=4000, ns=_isolated("u1", ("mnt", "pid")))
    proc.add(4100, "netonly", "/ca-test/netonly", ns={"net": "other-net"})
    proc.add(4300, "sleep", "/ca-test/plain")
    for path in ("/", *TREE):
        pids = proc.members.get(path, [])
        (cg / path.lstrip("/") / "cgroup.procs").write_text("".join(f"{p}\n" for p in pids))
    roots = _copy_states(tmp_path, cg)
    layout = CgroupLayout(kind=LayoutKind.UNIFIED, unified=cg)
    yield Discovery(layout, proc_root=proc.root, runtime_roots=roots), cg, proc.root


def test_scan_fixture_host(fake_host: tuple[Discovery, Path, Path]) -> None:
    disc, cg, proc = fake_host
    found = disc.scan()
    assert all(k == w.id for k, w in found.items())
    by_path = {w.cgroup: w for w in found.values()}
    assert set(by_path) == {"/", *TREE}
    for path, w in by_path.items():
        assert w.inode == os.stat(cg / path.lstrip("/")).st_ino

    def ns_ino(pid: int, kind: str) -> int:
        return os.stat(proc / str(pid) / "ns" / kind).st_ino

    docker = found[D]
    assert (docker.kind, docker.runtime, docker.name) == (WorkloadKind.CONTAINER, "docker", D[:12])
    assert docker.init_pid == 6000  # the earliest started, not the lowest pid
    assert docker.namespaces["net"] == ns_ino(6000, "net") != ns_ino(1, "net")
    nested = by_path[f"/system.slice/docker-{D}.scope/init.scope"]
    assert nested.kind is WorkloadKind.CGROUP and nested.labels["parent_container"] == D

    sandbox, app = found[C], found[E]
    assert (sandbox.runtime, sandbox.name, sandbox.pod_name, sandbox.namespace) == (
        "containerd", "POD", "web-0", "prod")
    assert (app.name, app.pod_uid, app.qos_class, app.init_pid) == ("app", U, "burstable", 5100)
    assert app.labels["bundle"].endswith(E) and app.labels["io.kubernetes.cri.sandbox-id"] == C
    pod = by_path[POD]
    assert (pod.kind, pod.pod_uid, pod.qos_class) == (WorkloadKind.CGROUP, U, "burstable")

    podman = found[P]  # crun's state names the `container` child: it belongs to the scope
    assert (podman.runtime, podman.init_pid) == ("podman", 2201)
    assert podman.labels["io.container.manager"] == "libpod"
    assert podman.namespaces["pid"] == ns_ino(2201, "pid")
    assert by_path[f"/machine.slice/libpod-{P}.scope/container"].kind is WorkloadKind.CGROUP
    conmon = by_path[f"/machine.slice/libpod-conmon-{P}.scope"]
    assert conmon.kind is WorkloadKind.CGROUP and conmon.runtime == ""

    runc = found[RUNC_ID]
    assert (runc.kind, runc.runtime, runc.cgroup, runc.init_pid) == (
        WorkloadKind.CONTAINER, "runc", RUNC_CG, 11274)
    assert runc.labels["org.example/a"] == "b"
    assert runc.labels["bundle"] == "/tmp/ca-test-runc-sample/bundle"
    byinit = found["byinit"]
    assert (byinit.cgroup, byinit.runtime, byinit.init_pid) == ("/custom/byinit", "runc", 3100)
    assert "stale1" not in found  # its cgroup is gone and its pid belongs to another process

    unknown = by_path["/ca-test/unknown1"]
    assert (unknown.kind, unknown.runtime, unknown.init_pid) == (
        WorkloadKind.CONTAINER, "unknown", 4001)
    assert unknown.namespaces["mnt"] != ns_ino(1, "mnt")
    assert unknown.namespaces["net"] == ns_ino(1, "net")
    assert by_path["/ca-test/unknown1/child"].labels["parent_container"] == "/ca-test/unknown1"
    for plain in ("/ca-test/netonly", "/ca-test/plain", "/", "/custom", "/system.slice"):
        assert by_path[plain].kind is WorkloadKind.CGROUP, plain
    cron = by_path["/system.slice/cron.service"]
    assert (cron.kind, cron.runtime, cron.name) == (WorkloadKind.SERVICE, "systemd", "cron.service")


def test_identify_matches_scan(fake_host: tuple[Discovery, Path, Path]) -> None:
    disc, _cg, _proc = fake_host
    found = disc.scan()
    for w in found.values():
        assert disc.identify(w.cgroup) == w, w.cgroup
    assert disc.identify("/no/such/cgroup") is None


def test_identify_vanished_cgroup(fake_host: tuple[Discovery, Path, Path]) -> None:
    disc, cg, _proc = fake_host
    assert disc.identify("/ca-test/plain") is not None
    shutil.rmtree(cg / "ca-test" / "plain")
    assert disc.identify("/ca-test/plain") is None
    assert "/ca-test/plain" not in disc.scan()


# --- walk and read_procs --------------------------------------------------------------------


def test_walk_tolerates_directories_vanishing(tmp_path: Path,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    for p in ("a/b/c", "a/d", "e"):
        (tmp_path / p).mkdir(parents=True)
    (tmp_path / "a" / "file").write_text("x")
    real_scandir = os.scandir

    def vanishing_scandir(path: str) -> object:
        if str(path).endswith("/a/b"):
            shutil.rmtree(path)  # removed between readdir of its parent and its own
        return real_scandir(path)

    monkeypatch.setattr(cgroup_tree.os, "scandir", vanishing_scandir)
    got = [d.path for d in walk(tmp_path)]
    assert got[0] == "/"
    assert set(got) == {"/", "/a", "/a/b", "/a/d", "/e"}
    assert walk(tmp_path / "missing") == []


@pytest.mark.root
def test_walk_and_procs_on_real_cgroups(cgroups: CgroupFactory) -> None:
    parent = cgroups.create()
    child = parent.child("leaf")
    proc = child.spawn(["sleep", "60"])
    root = cgroups.layout.reference_root
    dirs = {d.path: d.inode for d in walk(root)}
    assert dirs[parent.rel] == os.stat(parent.ref_dir).st_ino
    assert dirs[child.rel] == os.stat(child.ref_dir).st_ino
    assert read_procs(root, child.rel) == (proc.pid,)
    assert read_procs(root, parent.rel) == ()
    assert read_procs(root, parent.rel + "/gone") == ()


# --- properties: arbitrary input gives a result, never an exception --------------------------

_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
    lambda kids: st.lists(kids) | st.dictionaries(st.text(), kids),
    max_leaves=20,
)
_state_like = st.fixed_dictionaries(
    {"id": st.text() | st.integers()},
    optional={
        "init_process_pid": _json, "init_process_start": _json, "created": _json,
        "cgroup_paths": _json,
        "config": st.fixed_dictionaries({}, optional={"labels": _json, "cgroups": _json}),
    },
)


@given(_json | _state_like)
def test_runc_state_parser_total(doc: object) -> None:
    got = parse_runc_state(doc)
    assert got is None or (isinstance(got.id, str) and got.id)


@given(_json, _json)
def test_crun_status_parser_total(doc: object, config: object) -> None:
    got = parse_crun_status("x", doc, config)
    assert got is None or got.id == "x"


@settings(max_examples=50, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.binary(max_size=300), name=st.sampled_from(["state.json", "status"]))
def test_state_dir_of_arbitrary_bytes(tmp_path: Path, data: bytes, name: str) -> None:
    d = tmp_path / "c1"
    d.mkdir(exist_ok=True)
    for old in d.iterdir():
        old.unlink()
    (d / name).write_bytes(data)
    got = read_state_dir(d, "runc")
    assert got is None or isinstance(got.id, str)


@given(st.text())
def test_classify_total(path: str) -> None:
    assert classify.__wrapped__(path).kind in WorkloadKind
