"""Real cgroups for tests, created safely on unified, hybrid and legacy hosts.

Safety rules (DEVELOPERS.md): every cgroup lives under one unique prefix per factory, placed
beneath the test process's own cgroup of each hierarchy (v1 memory here sits under
/process_api/<id>); only processes the tests started are killed, by PID; everything is removed
at the end.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import time
import uuid
from collections.abc import Iterator, Sequence
from pathlib import Path

from collectors.layout import CgroupLayout, LayoutKind, detect_layout

#: v1 hierarchies a test cgroup is created in (cpuset needs cpus/mems set first; devices is
#: not read by the agent).
V1_USED = ("cpu", "cpuacct", "memory", "pids", "freezer", "blkio")


def own_cgroups(pid: int | str = "self") -> dict[str, str]:
    """Hierarchy key ("unified" or a v1 controller) -> this process's cgroup path."""
    out: dict[str, str] = {}
    for line in Path(f"/proc/{pid}/cgroup").read_text().splitlines():
        hid, ctrls, path = line.split(":", 2)
        if hid == "0":
            out["unified"] = path
        else:
            for ctrl in ctrls.split(","):
                out[ctrl] = path
    return out


class TestCgroup:
    """One test cgroup, present in the cgroup2 tree and in each used v1 hierarchy."""

    __test__ = False  # not a pytest class

    def __init__(self, factory: CgroupFactory, dirs: dict[str, Path], rel: str) -> None:
        self.factory = factory
        #: Hierarchy key -> absolute directory.
        self.dirs = dirs
        #: Path relative to the reference hierarchy's root ("/..."), as the agent reports it.
        self.rel = rel
        self.procs: list[subprocess.Popen[bytes]] = []

    @property
    def name(self) -> str:
        return self.rel.rsplit("/", 1)[-1]

    @property
    def ref_dir(self) -> Path:
        return self.dirs[self.factory.ref_key]

    def dir(self, key: str) -> Path:
        return self.dirs[key]

    def write(self, key: str, filename: str, value: str) -> None:
        (self.dirs[key] / filename).write_text(value)

    def read(self, key: str, filename: str) -> str:
        return (self.dirs[key] / filename).read_text()

    def child(self, name: str) -> TestCgroup:
        return self.factory.create(f"{self.rel_in_prefix}/{name}")

    @property
    def rel_in_prefix(self) -> str:
        return self.rel[len(self.factory.prefix_rel) + 1 :]

    def add_pid(self, pid: int) -> None:
        for d in self.dirs.values():
            (d / "cgroup.procs").write_text(str(pid))

    def spawn(self, argv: Sequence[str], **kwargs: object) -> subprocess.Popen[bytes]:
        """Start argv with the child already inside this cgroup (before exec)."""
        targets = [str(d / "cgroup.procs") for d in self.dirs.values()]

        def enter() -> None:
            for t in targets:
                with open(t, "w") as f:
                    f.write("0")

        proc = subprocess.Popen(list(argv), preexec_fn=enter, **kwargs)  # type: ignore[call-overload]
        self.procs.append(proc)
        return proc

    def burn(self, seconds: float | None = None) -> subprocess.Popen[bytes]:
        """A CPU burner (busy loop), optionally ending by itself after `seconds`."""
        code = (
            f"import time\nend=time.monotonic()+{seconds!r}\nwhile time.monotonic()<end: pass\n"
            if seconds is not None
            else "while True: pass\n"
        )
        return self.spawn(["python3", "-c", code])

    def pids(self) -> list[int]:
        text = (self.ref_dir / "cgroup.procs").read_text()
        return [int(x) for x in text.split()]

    def cpu_usage_usec(self) -> int:
        """The kernel's counter: cgroup2 cpu.stat where it has usage_usec, else cpuacct.usage."""
        stat = self.dirs.get("unified")
        if stat is not None and (stat / "cpu.stat").exists():
            for line in (stat / "cpu.stat").read_text().splitlines():
                k, v = line.split()
                if k == "usage_usec":
                    return int(v)
        return int(self.read("cpuacct", "cpuacct.usage")) // 1000

    def stop_processes(self, timeout: float = 10.0) -> None:
        """Kill what runs here (all started by tests) and wait until the cgroup is empty."""
        self._thaw()
        deadline = time.monotonic() + timeout
        while True:
            pids = self._all_pids()
            if not pids:
                break
            for pid in pids:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            for p in self.procs:
                with contextlib.suppress(Exception):
                    p.wait(timeout=0.05)
            if time.monotonic() > deadline:
                raise RuntimeError(f"test cgroup {self.rel} did not empty: {pids}")
            time.sleep(0.02)
        for p in self.procs:
            with contextlib.suppress(Exception):
                p.wait(timeout=1)

    def _all_pids(self) -> set[int]:
        pids: set[int] = set()
        for d in self.dirs.values():
            for sub, _dirs, files in os.walk(d):
                if "cgroup.procs" in files:
                    with contextlib.suppress(OSError):
                        pids.update(int(x) for x in Path(sub, "cgroup.procs").read_text().split())
        return pids

    def _thaw(self) -> None:
        for key, d in self.dirs.items():
            for sub, _dirs, _files in os.walk(d):
                if key == "unified":
                    with contextlib.suppress(OSError):
                        Path(sub, "cgroup.freeze").write_text("0")
                elif key == "freezer":
                    with contextlib.suppress(OSError):
                        Path(sub, "freezer.state").write_text("THAWED")

    def remove(self) -> None:
        self.stop_processes()
        for d in self.dirs.values():
            _rmtree_cgroup(d)


def _rmtree_cgroup(d: Path) -> None:
    if not d.exists():
        return
    for sub, dirs, _files in os.walk(d, topdown=False):
        for name in dirs:
            rmdir_retry(Path(sub, name))
    rmdir_retry(d)


def rmdir_retry(d: Path) -> None:
    for _ in range(100):
        try:
            d.rmdir()
            return
        except FileNotFoundError:
            return
        except OSError:
            time.sleep(0.02)
    d.rmdir()


def prefix_bases(layout: CgroupLayout) -> dict[str, Path]:
    """Hierarchy key -> the directory test prefixes go in: this process's own cgroup there."""
    mine = own_cgroups()
    bases: dict[str, Path] = {}
    if layout.unified is not None:
        bases["unified"] = layout.unified / mine.get("unified", "/").lstrip("/")
    if layout.kind is not LayoutKind.UNIFIED:
        for ctrl in V1_USED:
            root = layout.v1_root(ctrl)
            if root is not None and ctrl in mine:
                bases[ctrl] = root / mine[ctrl].lstrip("/")
    return bases


#: A prefix CgroupFactory makes: ca-test-<tag>-<pid of the test process>-<8 hex>.
_PREFIX = re.compile(r"ca-test-[a-z0-9]+-(\d+)-[0-9a-f]{8}")


def sweep_left_prefixes(layout: CgroupLayout | None = None) -> list[Path]:
    """Remove the prefixes of test processes that are gone (a run killed before its clean-up:
    SIGKILL, a machine's reboot of the runner), where no process is left in them. Only in
    this process's own cgroups, only names CgroupFactory makes. Returns what it removed."""
    removed: list[Path] = []
    for base in prefix_bases(layout or detect_layout()).values():
        if not base.is_dir():
            continue
        for d in base.iterdir():
            m = _PREFIX.fullmatch(d.name)
            if m is None or not d.is_dir() or Path(f"/proc/{m[1]}").exists():
                continue
            if any((Path(sub) / "cgroup.procs").read_text().strip()
                   for sub, _dirs, _files in os.walk(d)):
                continue  # something still runs there: not ours to end
            _rmtree_cgroup(d)
            removed.append(d)
    return removed


class CgroupFactory:
    """Creates test cgroups under one unique prefix; `close()` removes them all."""

    def __init__(self, layout: CgroupLayout | None = None, tag: str = "t") -> None:
        self.layout = layout or detect_layout()
        self.prefix_name = f"ca-test-{tag}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        self.bases = prefix_bases(self.layout)
        self.ref_key = "unified" if "unified" in self.bases else self._legacy_ref()
        ref_root = (
            self.layout.unified if self.ref_key == "unified" else self.layout.v1_root(self.ref_key)
        )
        assert ref_root is not None
        self.prefix_rel = "/" + str((self.bases[self.ref_key] / self.prefix_name).relative_to(
            ref_root
        ))
        self.created: list[TestCgroup] = []
        for key, base in self.bases.items():
            if key == "unified":
                self._delegate(base)
            (base / self.prefix_name).mkdir()

    def _legacy_ref(self) -> str:
        for ctrl in ("cpuacct", "cpu", "memory", "pids"):
            if ctrl in self.bases:
                return ctrl
        raise RuntimeError("no cgroup hierarchy usable for tests")

    def _delegate(self, parent: Path) -> None:
        """Best effort: enable in `parent` every controller it has, for its children.

        Only cgroups of our own are written: the prefix and test cgroups. The test process's own
        cgroup (the base) is written only when CA_TEST_DELEGATE_BASE=1 says the machine is ours
        (the lent pure-v2 host), which is how test cgroups get cpu/memory/io/pids files there.
        A cgroup that holds processes refuses (EBUSY, "no internal processes"): ignored.
        """
        if parent == self.bases.get("unified") and os.environ.get("CA_TEST_DELEGATE_BASE") != "1":
            return
        for ctrl in (parent / "cgroup.controllers").read_text().split():
            with contextlib.suppress(OSError):
                (parent / "cgroup.subtree_control").write_text(f"+{ctrl}")

    def create(self, name: str | None = None) -> TestCgroup:
        name = name or f"cg-{uuid.uuid4().hex[:8]}"
        dirs: dict[str, Path] = {}
        for key, base in self.bases.items():
            d = base / self.prefix_name / name
            if key == "unified":
                self._delegate(d.parent)
            d.mkdir(parents=False)
            dirs[key] = d
        cg = TestCgroup(self, dirs, f"{self.prefix_rel}/{name}")
        self.created.append(cg)
        return cg

    def close(self) -> None:
        errors: list[str] = []
        for cg in reversed(self.created):
            try:
                cg.stop_processes()
            except RuntimeError as e:
                errors.append(str(e))
        for key, base in self.bases.items():
            try:
                _rmtree_cgroup(base / self.prefix_name)
            except OSError as e:
                errors.append(f"{key}: {e}")
        if errors:
            raise RuntimeError("; ".join(errors))


@contextlib.contextmanager
def cgroup_factory(tag: str = "t") -> Iterator[CgroupFactory]:
    f = CgroupFactory(tag=tag)
    try:
        yield f
    finally:
        f.close()


def open_fd_targets() -> list[str]:
    """Where this process's open fds point (readlink of /proc/self/fd/*)."""
    out = []
    for fd in os.listdir("/proc/self/fd"):
        with contextlib.suppress(OSError):
            out.append(os.readlink(f"/proc/self/fd/{fd}"))
    return out
