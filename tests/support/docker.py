"""A private dockerd for tests: its own data root, socket, pidfile and cgroup parent.

    with private_dockerd() as d:
        cid = d.run("web-1", "sleep", "1000", labels={"com.docker.compose.project": "shop"})
        d.docker("pause", cid)

dockerd runs with the cgroupfs driver, no iptables, no bridge, the vfs storage driver (nothing
mounted that could outlive it), and a RELATIVE `--cgroup-parent`: runc places a relative path
beneath its own cgroup in every hierarchy, which is this test process's (v1 memory stays under
/process_api/<id>), so every container cgroup lives under one unique prefix of ours. The image
`local/busybox:1` is a `docker import` of a busybox-static rootfs. Cleanup removes only the
containers this helper created (by id), stops only this dockerd (by its pid), then the prefix's
cgroup directories and the data root.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import tarfile
import tempfile
import time
import uuid
from collections.abc import Iterator, Mapping
from pathlib import Path

from tests.support.runc import BUSYBOX, build_rootfs

#: Debian's docker.io CLI (another docker CLI may come first on PATH).
DOCKER_CLI = "/usr/bin/docker"
IMAGE = "local/busybox:1"


class DockerUnavailable(Exception):
    """dockerd cannot run here (the message says why)."""


def docker_unavailable_reason() -> str | None:
    if os.geteuid() != 0:
        return "needs root: starts a dockerd"
    for tool in ("/usr/sbin/dockerd", DOCKER_CLI, "/usr/bin/containerd", str(BUSYBOX)):
        if not Path(tool).exists():
            return f"{tool} missing (tests/setup/install-runtimes.sh installs it)"
    return None


def busybox_tar(dest: Path) -> Path:
    """A tar of a busybox-static rootfs, for `docker import` / `podman import`."""
    rootfs = dest / "rootfs"
    build_rootfs(rootfs)
    tar = dest / "busybox.tar"
    with tarfile.open(tar, "w") as t:
        for entry in sorted(rootfs.iterdir()):
            t.add(entry, arcname=entry.name)
    shutil.rmtree(rootfs)
    return tar


def _remove_cgroup_tree(d: Path) -> None:
    """rmdir a cgroup subtree, deepest first (only empty cgroups go)."""
    if not d.is_dir():
        return
    for sub, dirs, _files in os.walk(d, topdown=False):
        for name in dirs:
            with contextlib.suppress(OSError):
                os.rmdir(os.path.join(sub, name))
    with contextlib.suppress(OSError):
        d.rmdir()


def own_hierarchy_dirs(prefix: str) -> list[Path]:
    """`prefix` beneath this process's cgroup in every mounted hierarchy."""
    out: list[Path] = []
    own: dict[str, str] = {}
    for line in Path("/proc/self/cgroup").read_text().splitlines():
        hid, ctrls, path = line.split(":", 2)
        own["" if hid == "0" else ctrls] = path
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        left, _, right = line.partition(" - ")
        fields, rfields = left.split(), right.split()
        if len(rfields) < 3 or rfields[0] not in ("cgroup", "cgroup2"):
            continue
        mount = Path(fields[4])
        if rfields[0] == "cgroup2":
            key = ""
        else:
            opts = rfields[2].split(",")
            key = next((k for k in own if k and set(k.split(",")) <= set(opts)), "")
            if not key:
                continue
        base = own.get(key)
        if base is not None:
            out.append(mount / base.lstrip("/") / prefix)
    return out


class PrivateDockerd:
    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.socket = workdir / "docker.sock"
        self.data_root = workdir / "data"
        self.exec_root = workdir / "exec"
        self.pidfile = workdir / "docker.pid"
        self.cgroup_parent = f"ca-test-docker-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        self.proc: subprocess.Popen[bytes] | None = None
        self.created: list[str] = []
        self.log = workdir / "dockerd.log"

    def start(self, timeout: float = 60.0) -> None:
        with open(self.log, "wb") as log:
            self.proc = subprocess.Popen(
                ["/usr/sbin/dockerd", "--data-root", str(self.data_root),
                 "--exec-root", str(self.exec_root), "-H", f"unix://{self.socket}",
                 "--pidfile", str(self.pidfile), "--exec-opt", "native.cgroupdriver=cgroupfs",
                 "--iptables=false", "--ip6tables=false", "--bridge=none",
                 "--storage-driver", "vfs", "--cgroup-parent", self.cgroup_parent,
                 "--userland-proxy=false"],
                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            )
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                raise DockerUnavailable(f"dockerd exited: {self._log_tail()}")
            if self.socket.exists() and self.docker("version", check=False).returncode == 0:
                break
            if time.monotonic() > deadline:
                raise DockerUnavailable(f"dockerd did not answer in {timeout:g} s")
            time.sleep(0.2)
        tar = busybox_tar(self.workdir)
        self.docker("import", str(tar), IMAGE)

    def _log_tail(self) -> str:
        with contextlib.suppress(OSError):
            return " | ".join(self.log.read_text(errors="replace").splitlines()[-5:])
        return ""

    def docker(self, *argv: str, check: bool = True,
               timeout: float = 60.0) -> subprocess.CompletedProcess[str]:
        res = subprocess.run(
            [DOCKER_CLI, "-H", f"unix://{self.socket}", *argv],
            capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL,
            env={**os.environ, "DOCKER_CONFIG": str(self.workdir / "cli")},
        )
        if check and res.returncode != 0:
            raise RuntimeError(f"docker {' '.join(argv)}: {res.stderr.strip()}")
        return res

    def run(self, name: str, *argv: str, labels: Mapping[str, str] | None = None,
            options: tuple[str, ...] = ()) -> str:
        """`docker run -d --name NAME` with the busybox image; returns the full id."""
        label_args = [a for k, v in (labels or {}).items() for a in ("--label", f"{k}={v}")]
        cid = self.docker("run", "-d", "--network", "none", "--name", name, *label_args,
                          *options, IMAGE, *argv).stdout.strip()
        self.created.append(cid)
        return cid

    def inspect(self, cid: str, fmt: str) -> str:
        return self.docker("inspect", "-f", fmt, cid).stdout.strip()

    def close(self) -> None:
        for cid in self.created:
            self.docker("rm", "-f", cid, check=False)
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        for d in own_hierarchy_dirs(self.cgroup_parent):
            _remove_cgroup_tree(d)


@contextlib.contextmanager
def private_dockerd() -> Iterator[PrivateDockerd]:
    reason = docker_unavailable_reason()
    if reason is not None:
        raise DockerUnavailable(reason)
    workdir = Path(tempfile.mkdtemp(prefix="ca-dockerd-"))
    d = PrivateDockerd(workdir)
    try:
        d.start()
        yield d
    finally:
        d.close()
        shutil.rmtree(workdir, ignore_errors=True)
