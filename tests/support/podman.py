"""podman for tests: a private storage root, runc, the cgroupfs manager, our own cgroups.

    with private_podman() as p:
        cid = p.run("pm-1", "sleep", "1000", labels={"app": "shop"})
        p.start_service()        # the API socket (podman system service), when a test wants it

Containers get a RELATIVE `--cgroup-parent` and `--cgroups=no-conmon` (conmon stays in our
cgroup, so runc, started by it, places the container beneath this test process's cgroup in
every hierarchy). The file events backend needs no journald. Cleanup removes only the
containers this helper created, stops only the service it started, removes the prefix's
cgroup directories and the storage.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator, Mapping
from pathlib import Path

from tests.support.docker import _remove_cgroup_tree, busybox_tar, own_hierarchy_dirs

IMAGE = "local/busybox:1"


class PodmanUnavailable(Exception):
    """podman cannot run containers here (the message says why)."""


class PrivatePodman:
    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.root = workdir / "root"
        self.runroot = workdir / "run"
        self.socket = workdir / "podman.sock"
        self.cgroup_parent = f"ca-test-podman-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        self.created: list[str] = []
        self.service: subprocess.Popen[bytes] | None = None

    def podman(self, *argv: str, check: bool = True,
               timeout: float = 120.0) -> subprocess.CompletedProcess[str]:
        res = subprocess.run(
            ["podman", "--root", str(self.root), "--runroot", str(self.runroot),
             "--runtime", "runc", "--cgroup-manager", "cgroupfs", "--events-backend", "file",
             "--storage-driver", "vfs", *argv],
            capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL,
        )
        if check and res.returncode != 0:
            raise RuntimeError(f"podman {' '.join(argv)}: {res.stderr.strip()}")
        return res

    def setup(self) -> None:
        tar = busybox_tar(self.workdir)
        res = self.podman("import", str(tar), IMAGE, check=False)
        if res.returncode != 0:
            raise PodmanUnavailable(f"podman import failed: {res.stderr.strip()}")

    def run(self, name: str, *argv: str, labels: Mapping[str, str] | None = None) -> str:
        label_args = [a for k, v in (labels or {}).items() for a in ("--label", f"{k}={v}")]
        res = self.podman(
            "run", "-d", "--name", name, "--network", "none", "--cgroups=no-conmon",
            "--cgroup-parent", self.cgroup_parent,
            # podman's defaults exceed this host's hard limits; runc may not raise them.
            "--ulimit", "nofile=1024:1024", "--ulimit", "nproc=1024:1024",
            *label_args, IMAGE, *argv, check=False)
        cid = res.stdout.strip().splitlines()[-1] if res.stdout.strip() else ""
        if cid:
            self.created.append(cid)
        if res.returncode != 0:
            raise RuntimeError(f"podman run: {res.stderr.strip()}")
        return cid

    def inspect(self, cid: str, fmt: str) -> str:
        return self.podman("inspect", "-f", fmt, cid).stdout.strip()

    def start_service(self, timeout: float = 30.0) -> None:
        """`podman system service` on a socket of ours (the API the agent prefers)."""
        self.service = subprocess.Popen(
            ["podman", "--root", str(self.root), "--runroot", str(self.runroot),
             "--runtime", "runc", "--cgroup-manager", "cgroupfs", "--events-backend", "file",
             "--storage-driver", "vfs", "system", "service", "--time=0",
             f"unix://{self.socket}"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL)
        deadline = time.monotonic() + timeout
        while not self.socket.exists():
            if self.service.poll() is not None or time.monotonic() > deadline:
                raise PodmanUnavailable("podman system service did not start")
            time.sleep(0.1)

    def close(self) -> None:
        for cid in self.created:
            self.podman("rm", "-f", "-t", "0", cid, check=False)
        if self.service is not None and self.service.poll() is None:
            self.service.send_signal(signal.SIGTERM)
            try:
                self.service.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.service.kill()
                self.service.wait(timeout=10)
        for d in own_hierarchy_dirs(self.cgroup_parent):
            _remove_cgroup_tree(d)


@contextlib.contextmanager
def private_podman() -> Iterator[PrivatePodman]:
    if os.geteuid() != 0:
        raise PodmanUnavailable("needs root: runs podman containers")
    for tool in ("podman", "runc", "conmon"):
        if shutil.which(tool) is None:
            raise PodmanUnavailable(f"{tool} missing (tests/setup/install-runtimes.sh)")
    workdir = Path(tempfile.mkdtemp(prefix="ca-podman-"))
    p = PrivatePodman(workdir)
    try:
        p.setup()
        yield p
    finally:
        p.close()
        shutil.rmtree(workdir, ignore_errors=True)
