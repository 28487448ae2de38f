"""Real runc containers for tests: a busybox-static rootfs, an OCI config, `runc run -d`.

    with runc_container(cgroups, args=["sleep", "1000"]) as c:
        c.id, c.init_pid, c.bundle, c.cgroup, c.cgroup_dirs, c.exec([...])

The container's cgroup is placed beneath the test cgroup factory's prefix (or a test cgroup):
runc puts a RELATIVE cgroupsPath under its own cgroup in every hierarchy, which is the test
process's cgroup, so the v1 memory cgroup stays under /process_api/<id> as the safety rules
require. On a hybrid host runc 1.1 also creates it in the cgroup2 tree (cgroup_paths[""]).

Cleanup always runs: `runc kill KILL`, `runc delete -f`, removal of the directories runc
created in hierarchies the factory does not manage (cpuset, devices, name=systemd), and of the
bundle. When runc is not usable here at all (not root, not installed, no static busybox),
RuncUnavailable carries the reason (tests skip with it, and CI's skip allowlist fails them);
when runc is there but `runc run` fails, RuncFailed is raised: that is a test failure.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.support.cgroups import CgroupFactory, TestCgroup

BUSYBOX = Path("/bin/busybox")
RUNC_ROOT = Path("/run/runc")  # runc's default --root for root; what the agent reads


class RuncUnavailable(Exception):
    """runc cannot run containers on this machine (the message says why)."""


class RuncFailed(RuntimeError):
    """runc is installed but starting the container failed: never a skip."""


def runc_unavailable_reason() -> str | None:
    """Why real runc containers cannot run here, or None when they can (as far as we know)."""
    if os.geteuid() != 0:
        return "needs root: runc containers"
    if shutil.which("runc") is None:
        return "runc is not installed (apt-get install runc)"
    if not BUSYBOX.is_file():
        return f"{BUSYBOX} missing (apt-get install busybox-static)"
    with open(BUSYBOX, "rb") as f:
        head = f.read(4096)
    if b"ld-linux" in head or b"ld-musl" in head:
        return f"{BUSYBOX} is dynamically linked (install busybox-static)"
    return None


@dataclass
class RuncContainer:
    id: str
    init_pid: int
    bundle: Path
    #: The cgroupsPath handed to runc (relative).
    cgroups_path: str
    #: Path in the reference hierarchy ("/"-rooted), as the agent reports it.
    cgroup: str
    #: Hierarchy ("" = cgroup2, else v1 controller) -> absolute directory, from state.json.
    cgroup_dirs: dict[str, Path] = field(default_factory=dict)
    root: Path = RUNC_ROOT

    @property
    def rootfs(self) -> Path:
        return self.bundle / "rootfs"

    @property
    def netns_path(self) -> Path:
        return Path(f"/proc/{self.init_pid}/ns/net")

    def state_json(self) -> dict[str, Any]:
        """runc's own state file (what the agent reads)."""
        data: dict[str, Any] = json.loads((self.root / self.id / "state.json").read_text())
        return data

    def exec(self, argv: Sequence[str], timeout: float = 30.0) -> subprocess.CompletedProcess[str]:
        """Run argv inside the container (busybox applets), capturing output."""
        return subprocess.run(
            ["runc", "--root", str(self.root), "exec", self.id, *argv],
            capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL,
        )


def build_rootfs(rootfs: Path) -> None:
    """A minimal rootfs: static busybox plus a symlink per applet."""
    (rootfs / "bin").mkdir(parents=True)
    for d in ("proc", "sys", "dev", "tmp", "etc", "root"):
        (rootfs / d).mkdir()
    shutil.copy2(BUSYBOX, rootfs / "bin" / "busybox")
    applets = subprocess.run(
        [str(BUSYBOX), "--list"], capture_output=True, text=True, check=True
    ).stdout.split()
    for name in applets:
        if name != "busybox" and "/" not in name:
            with contextlib.suppress(FileExistsError):
                (rootfs / "bin" / name).symlink_to("busybox")
    (rootfs / "etc" / "passwd").write_text("root:x:0:0:root:/root:/bin/sh\n")
    (rootfs / "etc" / "group").write_text("root:x:0:\n")


def _cgroups_path(place: CgroupFactory | TestCgroup | None, cid: str) -> tuple[str, str | None]:
    """(relative cgroupsPath, prefix owned by this helper or None when the factory owns it)."""
    if isinstance(place, TestCgroup):
        return f"{place.factory.prefix_name}/{place.rel_in_prefix}/{cid}", None
    if isinstance(place, CgroupFactory):
        return f"{place.prefix_name}/{cid}", None
    own = f"ca-test-runc-{uuid.uuid4().hex[:8]}"
    return f"{own}/{cid}", own


def write_config(
    bundle: Path,
    args: Sequence[str],
    cgroups_path: str,
    *,
    netns_path: str | None,
    own_netns: bool,
    annotations: Mapping[str, str],
    hostname: str,
) -> None:
    subprocess.run(["runc", "spec", "-b", str(bundle)], check=True, capture_output=True)
    cfg_file = bundle / "config.json"
    cfg = json.loads(cfg_file.read_text())
    cfg["process"]["terminal"] = False
    cfg["process"]["args"] = list(args)
    cfg["root"]["readonly"] = False
    cfg["hostname"] = hostname
    cfg["linux"]["cgroupsPath"] = cgroups_path
    namespaces = [ns for ns in cfg["linux"]["namespaces"] if ns["type"] != "network"]
    if netns_path is not None:
        namespaces.append({"type": "network", "path": netns_path})
    elif own_netns:
        namespaces.append({"type": "network"})
    cfg["linux"]["namespaces"] = namespaces
    if annotations:
        cfg["annotations"] = dict(annotations)
    cfg_file.write_text(json.dumps(cfg, indent=1))


def _runc(root: Path, *argv: str, timeout: float = 30.0) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["runc", "--root", str(root), *argv],
        capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL,
    )


def _runc_detached(root: Path, log: Path, *argv: str, timeout: float) -> int:
    """`runc run -d`: the container inherits runc's stdio, so no pipes (a pipe would stay open
    as long as the container runs); errors go to runc's --log file."""
    return subprocess.run(
        ["runc", "--root", str(root), "--log", str(log), *argv],
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        timeout=timeout, check=False,
    ).returncode


def _reference_path(dirs: Mapping[str, str], factory_ref_root: Path | None) -> str:
    """The container's "/"-rooted path in the reference tree (cgroup2 where runc made one)."""
    unified = dirs.get("")
    if unified and factory_ref_root is not None:
        with contextlib.suppress(ValueError):
            return "/" + str(Path(unified).relative_to(factory_ref_root))
    for ctrl in ("cpuacct", "cpu", "memory", "pids"):
        if ctrl in dirs:
            # v1 hierarchies are mounted at /sys/fs/cgroup/<name>: strip the mount point.
            parts = Path(dirs[ctrl]).parts
            return "/" + "/".join(parts[5:])
    raise RuntimeError(f"runc recorded no usable cgroup path: {dirs}")


@contextlib.contextmanager
def runc_container(
    place: CgroupFactory | TestCgroup | None = None,
    *,
    args: Sequence[str] = ("sleep", "1000000"),
    own_netns: bool = True,
    share_netns_with_pid: int | None = None,
    netns_path: str | None = None,
    annotations: Mapping[str, str] | None = None,
    root: Path = RUNC_ROOT,
    start_timeout: float = 30.0,
) -> Iterator[RuncContainer]:
    """Start a detached runc container; always kill, delete and clean it up afterwards.

    Network: own namespace (default), the host's (own_netns=False), or joined: another
    process's (share_netns_with_pid) or a named one (netns_path, e.g. /run/netns/x).
    """
    reason = runc_unavailable_reason()
    if reason is not None:
        raise RuncUnavailable(reason)
    cid = f"ca-test-{uuid.uuid4().hex[:12]}"
    cgroups_path, own_prefix = _cgroups_path(place, cid)
    if share_netns_with_pid is not None:
        netns_path = f"/proc/{share_netns_with_pid}/ns/net"
    tmp = Path(tempfile.mkdtemp(prefix="ca-test-runc-"))
    bundle = tmp / "bundle"
    recorded: dict[str, str] = {}
    started = False
    init_pid: int | None = None
    try:
        bundle.mkdir()
        build_rootfs(bundle / "rootfs")
        write_config(
            bundle, args, cgroups_path, netns_path=netns_path, own_netns=own_netns,
            annotations=annotations or {}, hostname=cid[:20],
        )
        pid_file = tmp / "init.pid"
        log = tmp / "runc.log"
        started = True
        rc = _runc_detached(
            root, log, "run", "-d", "-b", str(bundle), "--pid-file", str(pid_file), cid,
            timeout=start_timeout,
        )
        if rc != 0:
            text = log.read_text(errors="replace").strip() if log.exists() else ""
            raise RuncFailed(f"runc run failed ({rc}): {text[-500:]}")
        init_pid = int(pid_file.read_text().strip())
        state = json.loads((root / cid / "state.json").read_text())
        recorded = {str(k): str(v) for k, v in state.get("cgroup_paths", {}).items()}
        factory = place.factory if isinstance(place, TestCgroup) else place
        ref_root = factory.layout.reference_root if factory is not None else _unified_root()
        yield RuncContainer(
            id=cid,
            init_pid=init_pid,
            bundle=bundle,
            cgroups_path=cgroups_path,
            cgroup=_reference_path(recorded, ref_root),
            cgroup_dirs={k: Path(v) for k, v in recorded.items()},
            root=root,
        )
    finally:
        if started:
            _destroy(root, cid, init_pid)
        factory = place.factory if isinstance(place, TestCgroup) else place
        dirs = {**expected_cgroup_dirs(cgroups_path), **recorded}
        _remove_cgroup_dirs(dirs, cgroups_path, own_prefix, factory)
        shutil.rmtree(tmp, ignore_errors=True)


def expected_cgroup_dirs(cgroups_path: str) -> dict[str, str]:
    """Where runc puts a relative cgroupsPath: under our own cgroup of every mounted hierarchy
    ("" = cgroup2, v1 keyed by its first option: controller or name=...)."""
    own: dict[str, str] = {}
    for line in Path("/proc/self/cgroup").read_text().splitlines():
        hid, ctrls, path = line.split(":", 2)
        for c in ctrls.split(",") if hid != "0" else [""]:
            own[c] = path
    out: dict[str, str] = {}
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        left, _, right = line.partition(" - ")
        fields, rfields = left.split(), right.split()
        if len(fields) < 5 or len(rfields) < 3 or rfields[0] not in ("cgroup", "cgroup2"):
            continue
        opts = rfields[2].split(",")
        keys = [""] if rfields[0] == "cgroup2" else [o for o in opts if o in own]
        for key in keys[:1]:
            base = Path(fields[4]) / own.get(key, "/").lstrip("/")
            out[key] = str(base / cgroups_path)
    return out


def _unified_root() -> Path | None:
    from collectors.layout import detect_layout

    return detect_layout().unified


def process_dead(pid: int) -> bool:
    """Gone, or a zombie (its parent, pid 1 here, reaps runc's orphans a second or so later)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True
    return stat.rsplit(")", 1)[-1].split()[0] in ("Z", "X")


def _destroy(root: Path, cid: str, init_pid: int | None) -> None:
    _runc(root, "kill", cid, "KILL")
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        res = _runc(root, "state", cid)
        if res.returncode != 0 or '"stopped"' in res.stdout:
            break
        time.sleep(0.05)
    _runc(root, "delete", "-f", cid)
    while init_pid is not None and not process_dead(init_pid) and time.monotonic() < deadline:
        time.sleep(0.02)


def _remove_cgroup_dirs(
    recorded: Mapping[str, str],
    cgroups_path: str,
    own_prefix: str | None,
    factory: CgroupFactory | None,
) -> None:
    """rmdir what runc left: the leaf everywhere, and the parents it had to create in
    hierarchies the factory does not manage (or all of them, under our own prefix)."""
    managed = {("" if k == "unified" else k) for k in (factory.bases if factory else {})}
    depth = len(cgroups_path.split("/"))
    for key, leaf in recorded.items():
        d = Path(leaf)
        levels = depth if (own_prefix is not None or key not in managed) else 1
        # A comma-joined co-mount ("cpu,cpuacct") is listed once per controller: ENOENT is fine.
        for _ in range(levels):
            _rmdir_if_leaf(d)
            d = d.parent


def _rmdir_if_leaf(d: Path) -> None:
    for _try in range(100):
        try:
            d.rmdir()
            return
        except FileNotFoundError:
            return
        except OSError:
            try:
                if any(p.is_dir() for p in d.iterdir()):
                    return  # still holds other test cgroups: not ours to remove yet
            except OSError:
                return
            time.sleep(0.02)  # the last task is still leaving
