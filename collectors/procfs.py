"""Processes from procfs: name, parent, uid, start time, cgroup paths and namespace inodes.

Every reader takes `proc_root` so tests can point it at a fixture tree. A process that exits
while it is being read is an expected outcome (None / left out), never an exception.
"""

from __future__ import annotations

import errno
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType

PROC = Path("/proc")

#: Namespace kinds under /proc/<pid>/ns (time_for_children is left out: it mirrors time).
NS_KINDS = ("cgroup", "ipc", "mnt", "net", "pid", "pid_for_children", "time", "user", "uts")


@dataclass(frozen=True, slots=True)
class NamespaceId:
    """A namespace is identified by the device and inode of its nsfs file."""

    dev: int
    ino: int


@dataclass(frozen=True, slots=True)
class ProcessInfo:
    pid: int
    ppid: int
    name: str
    #: Real uid (first field of the Uid: line of /proc/<pid>/status).
    uid: int
    #: Start time in clock ticks since boot (field 22 of /proc/<pid>/stat).
    start_ticks: int
    #: Hierarchy key ("unified", a v1 controller, or "name=systemd") -> cgroup path.
    cgroups: Mapping[str, str]
    #: Namespace kind -> id; kinds that could not be read (EACCES, old kernel) are absent.
    namespaces: Mapping[str, NamespaceId]


def parse_stat(text: str) -> tuple[str, int, int] | None:
    """(comm, ppid, start_ticks) from /proc/<pid>/stat text, None when malformed.

    comm may hold spaces and parentheses, so it spans from the first "(" to the LAST ")".
    """
    open_ = text.find("(")
    close = text.rfind(")")
    if open_ < 0 or close < open_:
        return None
    rest = text[close + 1 :].split()
    # rest[0] is field 3 (state): ppid is field 4, starttime field 22.
    if len(rest) < 20:
        return None
    try:
        return text[open_ + 1 : close], int(rest[1]), int(rest[19])
    except ValueError:
        return None


def parse_cgroup(text: str) -> dict[str, str]:
    """Lines of /proc/<pid>/cgroup ("hid:controllers:path") -> hierarchy key -> path."""
    out: dict[str, str] = {}
    for line in text.splitlines():
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        hid, ctrls, path = parts
        if hid == "0" and ctrls == "":
            out["unified"] = path
            continue
        for ctrl in ctrls.split(","):
            if ctrl:
                out[ctrl] = path
    return out


def parse_status_uid(text: str) -> int | None:
    for line in text.splitlines():
        if line.startswith("Uid:"):
            fields = line.split()
            if len(fields) >= 2 and fields[1].isdigit():
                return int(fields[1])
            return None
    return None


def read_namespaces(pid: int | str, proc_root: Path = PROC) -> dict[str, NamespaceId]:
    """Kind -> NamespaceId of one process; unreadable kinds are left out.

    Raises FileNotFoundError/ProcessLookupError when the process itself is gone.
    """
    base = f"{proc_root}/{pid}/ns/"
    out: dict[str, NamespaceId] = {}
    for kind in NS_KINDS:
        try:
            st = os.stat(base + kind)
        except PermissionError:
            continue
        except OSError as e:
            if e.errno == errno.ENOENT and os.path.isdir(base):
                continue  # kind unknown to this kernel
            raise
        out[kind] = NamespaceId(st.st_dev, st.st_ino)
    return out


def _read(path: str) -> str:
    with open(path, encoding="utf-8", errors="replace") as f:
        return f.read()


def read_process(pid: int, proc_root: Path = PROC) -> ProcessInfo | None:
    """Everything the agent needs about one process; None if it vanished or is unreadable."""
    base = f"{proc_root}/{pid}/"
    try:
        stat = parse_stat(_read(base + "stat"))
        if stat is None:
            return None
        uid = parse_status_uid(_read(base + "status"))
        cgroups = parse_cgroup(_read(base + "cgroup"))
        namespaces = read_namespaces(pid, proc_root)
    except OSError:
        # Vanished (ENOENT/ESRCH), hidden (EACCES) or unreadable: not a process we can use.
        return None
    name, ppid, start = stat
    return ProcessInfo(
        pid=pid,
        ppid=ppid,
        name=name,
        uid=uid if uid is not None else -1,
        start_ticks=start,
        cgroups=MappingProxyType(cgroups),
        namespaces=MappingProxyType(namespaces),
    )


def iter_pids(proc_root: Path = PROC) -> list[int]:
    """Numeric entries of proc_root (processes, not threads), ascending."""
    try:
        with os.scandir(proc_root) as it:
            return sorted(int(e.name) for e in it if e.name.isdigit())
    except FileNotFoundError:
        return []


def read_processes(proc_root: Path = PROC) -> dict[int, ProcessInfo]:
    """One pass over procfs: pid -> ProcessInfo for every process still there."""
    out: dict[int, ProcessInfo] = {}
    for pid in iter_pids(proc_root):
        info = read_process(pid, proc_root)
        if info is not None:
            out[pid] = info
    return out


def host_namespaces(proc_root: Path = PROC) -> Mapping[str, NamespaceId]:
    """The host's namespaces: pid 1's, per kind; where pid 1's link is unreadable (EACCES even
    for root on some hosts) the agent's own (/proc/self) stands in for that kind."""
    out: dict[str, NamespaceId] = {}
    for kind in NS_KINDS:
        for who in ("1", "self"):
            try:
                st = os.stat(f"{proc_root}/{who}/ns/{kind}")
            except OSError:
                continue
            out[kind] = NamespaceId(st.st_dev, st.st_ino)
            break
    return MappingProxyType(out)


def boot_time(proc_root: Path = PROC) -> int | None:
    """Boot time in seconds since the epoch (btime of /proc/stat)."""
    try:
        for line in _read(f"{proc_root}/stat").splitlines():
            if line.startswith("btime "):
                return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        return None
    return None


def boot_id(proc_root: Path = PROC) -> str | None:
    try:
        return _read(f"{proc_root}/sys/kernel/random/boot_id").strip() or None
    except OSError:
        return None


CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def start_time_s(info: ProcessInfo, btime: int) -> float:
    """Wall-clock start time (epoch seconds) of a process, given the boot time."""
    return btime + info.start_ticks / CLOCK_TICKS
