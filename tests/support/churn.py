"""Container churn on real cgroups: many short lives, each created, run, emptied and removed.

One life: mkdir in cgroup2 and every used v1 hierarchy (under the factory's own prefix), a
short shell CPU burner started inside it, its exit awaited, the kernel's last CPU counter read,
then (after `rmdir_delay_s`, 0 = at once) the cgroup removed everywhere. Lives start at a fixed
rate from a few threads, so a slow one does not hold up the next.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

from tests.support.cgroups import CgroupFactory, rmdir_retry

#: A burner of a few ms of CPU (busybox/dash arithmetic loop).
BURN = "i=0; while [ $i -lt 3000 ]; do i=$((i+1)); done"


@dataclass(frozen=True)
class Life:
    rel: str
    #: The kernel's usage_usec read after the burner exited and the delay, just before rmdir.
    usage_usec: int
    removed_at: float
    #: Directory inode in the reference hierarchy: with the boot id, the incarnation key.
    inode: int = 0


def agent_fds(pid: int) -> list[str]:
    """Where each of a process's fds points (readlink of /proc/<pid>/fd/*)."""
    out: list[str] = []
    d = Path(f"/proc/{pid}/fd")
    for name in os.listdir(d):
        with contextlib.suppress(OSError):
            out.append(os.readlink(d / name))
    return out


def final_read_process(pid: int) -> int | None:
    """The agent's final-read process (agent.kernel.final_read_child), if it runs one."""
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            children = (task / "children").read_text().split()
        except OSError:
            continue
        for child in children:
            try:
                cmdline = Path(f"/proc/{child}/cmdline").read_bytes()
            except OSError:
                continue
            if b"final_read_child" in cmdline:
                return int(child)
    return None


def inotify_watches(pid: int) -> int:
    """Watches held by the process's inotify instances (one `inotify wd:` line each)."""
    n = 0
    d = Path(f"/proc/{pid}/fdinfo")
    for name in os.listdir(d):
        with contextlib.suppress(OSError):
            n += sum(1 for line in (d / name).read_text().splitlines()
                     if line.startswith("inotify wd:"))
    return n


class Churn:
    def __init__(self, factory: CgroupFactory, rate: float, rmdir_delay_s: float,
                 workers: int = 4) -> None:
        self.factory = factory
        self.rate = rate
        self.rmdir_delay_s = rmdir_delay_s
        self.workers = workers
        self.lives: list[Life] = []
        self.errors: list[str] = []
        self._lock = threading.Lock()

    def run(self, seconds: float) -> list[Life]:
        """Start `rate` lives a second for `seconds`; returns when all are removed."""
        slots = [time.monotonic() + i / self.rate for i in range(int(seconds * self.rate))]
        todo = iter(slots)
        take = threading.Lock()

        def worker() -> None:
            while True:
                with take:
                    at = next(todo, None)
                if at is None:
                    return
                delay = at - time.monotonic()
                if delay > 0:
                    time.sleep(delay)
                try:
                    life = self.one_life()
                except OSError as e:
                    with self._lock:
                        self.errors.append(str(e))
                    continue
                with self._lock:
                    self.lives.append(life)

        threads = [threading.Thread(target=worker) for _ in range(self.workers)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        return self.lives

    def one_life(self) -> Life:
        name = f"life-{uuid.uuid4().hex[:10]}"
        dirs = [base / self.factory.prefix_name / name for base in self.factory.bases.values()]
        for d in dirs:
            d.mkdir()
        targets = [str(d / "cgroup.procs") for d in dirs]

        def enter() -> None:
            for t in targets:
                with open(t, "w") as f:
                    f.write("0")

        ref = self.factory.bases[self.factory.ref_key] / self.factory.prefix_name / name
        inode = ref.stat().st_ino
        try:
            proc = subprocess.Popen(["/bin/sh", "-c", BURN], preexec_fn=enter)
            proc.wait()
            if self.rmdir_delay_s:
                time.sleep(self.rmdir_delay_s)
            # The last value the kernel will ever show: read right before the directory goes.
            # wait() returns at the child's exit_notify; its last slice of CPU is charged at
            # its final schedule a moment later (on the other core): read until it holds.
            usage = usage_usec(ref, self.factory.ref_key, dirs)
            for _ in range(3):
                again = usage_usec(ref, self.factory.ref_key, dirs)
                if again == usage:
                    break
                usage = again
        finally:
            for d in dirs:
                rmdir_retry(d)
        return Life(f"{self.factory.prefix_rel}/{name}", usage, time.monotonic(), inode)


def usage_usec(ref: Path, ref_key: str, dirs: list[Path]) -> int:
    if ref_key == "unified":
        for line in (ref / "cpu.stat").read_text().splitlines():
            k, v = line.split()
            if k == "usage_usec":
                return int(v)
    for d in dirs:
        if (d / "cpuacct.usage").exists():
            return int((d / "cpuacct.usage").read_text()) // 1000
    raise OSError(f"no CPU counter for {ref}")
