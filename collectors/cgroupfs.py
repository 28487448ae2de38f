"""CgroupReader: one CgroupSample per cgroup, on unified, hybrid and legacy hosts.

- unified: everything from the cgroup2 directory (cgroup.controllers says which controllers'
  files exist, so absent controllers cost no failed opens);
- hybrid: cgroup.events, cgroup.stat, PSI and cpu.stat usage from the cgroup2 directory;
  memory, pids, blkio, freezer, CPU throttling/quota/shares (and cpuacct only if cgroup2 has
  no usage) from the v1 hierarchies;
- legacy: everything from the v1 hierarchies.

CPU usage on hybrid hosts comes from cgroup2 `cpu.stat` rather than cpuacct: it exists even
without controllers, is the kernel's exact rstat counter already in µs (the v2 unit), and its
user/system split is µs-exact where cpuacct.stat only has USER_HZ ticks. It also needs no v1
path resolution, since it lives in the reference directory itself.

A cgroup's v1 path can differ between hierarchies (here memory sits under /process_api/<id>).
Each controller's path comes from /proc/<pid>/cgroup of a member (member_pid, else the first
pid of the cgroup's cgroup.procs), else the same relative path when that directory exists,
else the same path re-rooted under the agent's own cgroup of that hierarchy (hierarchies
mirror each other below the point where they diverge). Resolutions are cached per path and
redone when the directory inode changes (a new incarnation), when a different member pid is
given, and after RESOLVE_TTL_S.

Speed (tests/bench/bench_collectors.py): each controller's files are read in one batch with
openat() relative to a directory fd, and the directory fds and the files' fds are kept open
between reads (OpenDirs: bounded, swept when idle, given back on EMFILE, closed by release()):
a kept file is re-read with one pread at offset 0. The inode comes from the fstat
done when a directory is opened; a kept fd of a cgroup that was removed since answers
ENOENT/ENODEV for every file, which triggers one stat and, for a cgroup created again at the
same path, a second read on a fresh fd. Thread-safe (one lock per reader).

Read only what can have changed (the previous sample's values stand for files not read):
- always: cgroup.events, cgroup.stat, cpu.stat (usage: the trigger), PSI (a task blocked on
  IO stalls without CPU), every memory file but the limits (reclaim, writeback and charges
  from outside, e.g. socket buffers in softirq, move them without CPU in the cgroup), io.stat
  (v2 charges writeback to the cgroup), pids.current (a task moved out), freezer.state;
- when usage_usec moved since the last read (a cgroup that ran no task cannot have moved
  them): v1 cpu.stat throttling, cpuacct.stat, v1 blkio counters (v1 charges IO to the
  submitting task's cgroup, writeback to the root), memory.oom_control, pids.events, pids.peak
  (also when pids.current exceeds the last peak);
- when something was written to the directory (inotify IN_MODIFY on the kept directories of
  the memory, cpu and pids hierarchies, or of every cgroup2 directory on unified hosts; a
  directory not watched counts as written): the limits cpu.max, cpu.weight, cfs quota and
  period, shares, memory.min/low/high/max, swap.max, v1 limit_in_bytes, soft_limit and
  memsw.limit, pids.max; a write to cgroup.procs (a task moved in) also re-reads pids.peak;
- everything: on the first read, when `populated` changed, when the v1 paths were resolved
  again, and at least every FULL_READ_EVERY reads.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType

from collectors.blockdev import BlockDevices
from collectors.cgroup_v1 import read_cpu_v1, read_freezer_v1, read_io_v1, read_memory_v1
from collectors.cgroup_v2 import (
    DIR_VANISHED,
    CgroupDir,
    OpenDirs,
    Vanished,
    cpu_limits,
    cpu_sample,
    events,
    flat,
    frozen_map,
    parse_controllers,
    parsed,
    pressure_sample,
    psi_files_at,
    read_file,
    read_io,
    read_memory,
    read_pids,
)
from collectors.inotify import IN_IGNORED, IN_MODIFY, IN_ONLYDIR, IN_Q_OVERFLOW, Inotify
from collectors.layout import CgroupLayout, LayoutKind
from collectors.parsers import parse_proc_cgroup, parse_procs_first
from collectors.samples import CgroupSample, CpuSample, IoDeviceSample

#: Seconds a v1 path resolution is trusted before it is redone.
RESOLVE_TTL_S = 60.0
#: Every file of a cgroup is read at least once per this many reads of it.
FULL_READ_EVERY = 10
#: Above this many cached resolutions the cache is emptied (paths no longer read linger).
_CACHE_MAX = 100_000
_RESOLVE_TTL_NS = int(RESOLVE_TTL_S * 1e9)
_NO_PATHS: Mapping[str, str] = MappingProxyType({})


@dataclass(slots=True)
class _Last:
    """A cgroup's last sample, and its reads since everything was read."""

    sample: CgroupSample
    partial_reads: int


@dataclass(slots=True)
class _Resolved:
    inode: int
    pid: int | None
    at_ns: int
    paths: Mapping[str, str]


class CgroupReader:
    def __init__(
        self,
        layout: CgroupLayout,
        *,
        sys_dev_block: Path = Path("/sys/dev/block"),
        proc_root: Path = Path("/proc"),
        max_open_dirs: int = 16384,
    ) -> None:
        """`max_open_dirs`: fds kept open between reads, directories and their files
        (0: none), see OpenDirs."""
        self.layout = layout
        self._kind = layout.kind
        self._ref_root = str(layout.reference_root)
        self._ref_key = "unified" if layout.unified is not None else _legacy_ref_key(layout)
        self._devices = BlockDevices(sys_dev_block)
        self._proc = str(proc_root)
        self._v1_roots = {ctrl: str(p) for ctrl, p in layout.v1.items()}
        self._psi = psi_files_at(self._ref_root)
        # The reference directory's files, read in one batch.
        self._unified_files = (
            "cgroup.controllers",
            "cgroup.events",
            "cgroup.stat",
            "cpu.stat",
            *self._psi,
        )
        self._hybrid_files = ("cgroup.events", "cgroup.stat", "cpu.stat", *self._psi)
        mem_root = self._v1_roots.get("memory")
        # memsw files exist only with swap accounting: judged once at the hierarchy root.
        self._memsw = mem_root is not None and os.path.exists(
            f"{mem_root}/memory.memsw.usage_in_bytes"
        )
        self._anchor = self._own_cgroups()
        self._cache: dict[str, _Resolved] = {}
        self._last: dict[str, _Last] = {}
        # Written-to tracking of the kept directories whose limits are read only when written.
        self._notify: Inotify | None = None
        self._wd_of: dict[str, int] = {}
        self._path_of: dict[int, str] = {}
        self._written: set[str] = set()
        if self._kind is LayoutKind.UNIFIED:
            self._limit_roots: tuple[str, ...] = (self._ref_root,)
        else:
            self._limit_roots = tuple(
                root for ctrl, root in self._v1_roots.items() if ctrl in ("cpu", "memory", "pids")
            )
        self._dirs = OpenDirs(max_open_dirs, on_keep=self._watch, on_drop=self._unwatch)
        # The daemon reads from a worker thread while control code may ask for v1_paths.
        self._lock = threading.Lock()

    # -- public --------------------------------------------------------------------------
    def read(self, path: str, *, member_pid: int | None = None) -> CgroupSample:
        """Everything about the cgroup at `path` (relative to layout.reference_root)."""
        mono = time.monotonic_ns()
        wall = time.time_ns()
        with self._lock:
            return self._read(path, member_pid, mono, wall)

    def v1_paths(self, path: str, *, member_pid: int | None = None) -> dict[str, str]:
        """v1 controller -> the cgroup's path in that hierarchy ({} on unified hosts or when
        the cgroup is gone)."""
        if not self._v1_roots:
            return {}
        now = time.monotonic_ns()
        with self._lock:
            try:
                ref = self._ref_dir(path, now)
            except (Vanished, OSError):
                return {}
            try:
                return dict(self._resolved(path, ref, member_pid, now))
            except Vanished:
                return {}
            finally:
                ref.close()

    def release(self, path: str) -> None:
        """Close every fd kept for the cgroup at `path` (all hierarchies) and forget its v1
        paths: call it when the cgroup is removed, so no fd pins a dying cgroup."""
        ref_path = self._ref_root if path == "/" else self._ref_root + path
        with self._lock:
            self._forget(path, ref_path)
            # A read that failed half-way forgets the resolution but may keep some v1
            # directories: close the candidates too.
            for ctrl in self._v1_roots:
                for cand in self._candidates(path, ctrl):
                    self._dirs.drop(self._v1_abs(ctrl, cand))

    @property
    def kept_fds(self) -> int:
        """Fds kept open between reads: directories and their files, in every hierarchy."""
        return len(self._dirs)

    def close(self) -> None:
        """Close the fds kept between reads (reading again reopens them)."""
        with self._lock:
            self._dirs.close()
            self._last.clear()
            if self._notify is not None:
                self._notify.close()
                self._notify = None

    def __enter__(self) -> CgroupReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- one read ------------------------------------------------------------------------
    def _ref_dir(self, path: str, now: int) -> CgroupDir:
        """The reference directory, its inode checked by one stat (a recreated cgroup at the
        same path gets a new inode and a new fd). Raises Vanished / OSError."""
        ref_path = self._ref_root if path == "/" else self._ref_root + path
        try:
            ino = os.stat(ref_path).st_ino
        except OSError as e:
            if e.errno in DIR_VANISHED:
                self._forget(path, ref_path)
                raise Vanished(path) from None
            raise
        return self._dirs.get(ref_path, now, ino)

    def _read(self, path: str, member_pid: int | None, mono: int, wall: int) -> CgroupSample:
        ref_path = self._ref_root if path == "/" else self._ref_root + path
        self._drain()
        # No stat per read: a kept directory fd of a cgroup removed since (and maybe created
        # again at the same path) answers ENOENT/ENODEV for every file, which is checked
        # below; then the read is done once more on a freshly opened directory.
        for _attempt in range(2):
            try:
                ref = self._dirs.get(ref_path, mono)
            except Vanished:
                self._forget(path, ref_path)
                return CgroupSample(path, None, mono, wall, vanished=True)
            except OSError:  # EACCES and such: nothing readable, but not gone
                return CgroupSample(path, None, mono, wall)
            used = [ref]
            try:
                if self._kind is LayoutKind.UNIFIED:
                    sample = self._read_unified(path, ref.ino, mono, wall, ref)
                else:
                    sample = self._read_v1(path, mono, wall, ref, member_pid, used)
                for d in used:
                    if d.emfile:  # this read lacks fields for want of fds: keep fewer
                        self._dirs.shrink(mono)
                    if d.missing and self._gone(d.path, d.ino):
                        # openat in a removed kernfs directory answers ENOENT, like an
                        # absent file: the directory was removed (before or during the read).
                        self._dirs.drop(d.path)
                        if d is ref:
                            raise Vanished(path)
                        self._cache.pop(path, None)  # resolve the v1 paths again next time
                for d in used:
                    self._written.discard(d.path)
                return sample
            except Vanished:
                self._forget(path, ref_path)
                if ref.fresh:
                    return CgroupSample(path, ref.ino, mono, wall, vanished=True)
            finally:
                for d in used:
                    d.close()
        return CgroupSample(path, None, mono, wall, vanished=True)

    def _forget(self, path: str, ref_path: str) -> None:
        """Drop what is kept about a cgroup that is gone."""
        self._dirs.drop(ref_path)
        self._last.pop(path, None)
        e = self._cache.pop(path, None)
        if e is not None:
            for ctrl, rel in e.paths.items():
                self._dirs.drop(self._v1_abs(ctrl, rel))

    # -- what was written to -------------------------------------------------------------
    def _watch(self, dir_path: str) -> None:
        """A directory is now kept: watch it for writes if its limits are read only then."""
        if not dir_path.startswith(self._limit_roots):
            return
        try:
            if self._notify is None:
                self._notify = Inotify()
            wd = self._notify.add_watch(dir_path, IN_MODIFY | IN_ONLYDIR)
        except OSError:  # no inotify, or out of watches: the directory counts as written
            return
        self._wd_of[dir_path] = wd
        self._path_of[wd] = dir_path
        self._written.add(dir_path)  # its first read as a kept directory reads the limits

    def _unwatch(self, dir_path: str) -> None:
        wd = self._wd_of.pop(dir_path, None)
        if wd is not None:
            self._path_of.pop(wd, None)
            self._written.discard(dir_path)
            if self._notify is not None:
                self._notify.rm_watch(wd)

    def _drain(self) -> None:
        """Note the directories written to since the last read (one read syscall)."""
        if self._notify is None:
            return
        for ev in self._notify.read_events():
            if ev.mask & IN_Q_OVERFLOW:
                self._written.update(self._wd_of)
                continue
            dir_path = self._path_of.get(ev.wd)
            if dir_path is None:
                continue
            if ev.mask & IN_IGNORED:  # removed: the kernel dropped the watch
                del self._path_of[ev.wd]
                self._wd_of.pop(dir_path, None)
            self._written.add(dir_path)

    def _limits_stale(self, d: CgroupDir | None) -> bool:
        """The directory's limits must be read: written to since its last read, or not
        watched."""
        return d is not None and (d.path in self._written or d.path not in self._wd_of)

    def _previous(self, path: str, inode: int | None) -> CgroupSample | None:
        """The last sample, to stand for files not read now; None: read everything."""
        last = self._last.get(path)
        if last is None or last.sample.inode != inode or last.partial_reads >= FULL_READ_EVERY:
            return None
        return last.sample

    def _remember(self, sample: CgroupSample, prev: CgroupSample | None) -> None:
        last = self._last.get(sample.path)
        if prev is None or last is None:
            self._last[sample.path] = _Last(sample, 0)
        else:
            last.sample = sample
            last.partial_reads += 1

    def _v1_abs(self, ctrl: str, rel: str) -> str:
        return self._v1_roots[ctrl] + ("" if rel == "/" else rel)

    # -- unified -------------------------------------------------------------------------
    def _read_unified(
        self, path: str, inode: int, mono: int, wall: int, d: CgroupDir
    ) -> CgroupSample:
        datas = d.read_many(self._unified_files)
        ctrls = parse_controllers(datas[0])
        populated, frozen = events(datas[1])
        prev = self._previous(path, inode)
        if prev is not None and prev.populated != populated:
            prev = None  # a cgroup that filled or emptied is read whole
        pressure = pressure_sample(self._psi, datas[4:], d.unsupported) if self._psi else None
        prev_cpu = prev.cpu if prev is not None else None
        stale = self._limits_stale(d)
        quota = period = weight = None
        if ctrls is None or "cpu" in ctrls:
            quota, period, weight = cpu_limits(d, prev_cpu, limits=stale)
        cpu = cpu_sample(flat(datas[3]), quota, period, weight)
        moved = _moved(prev_cpu, cpu)
        memory = None
        if ctrls is None or "memory" in ctrls:
            memory = read_memory(d, prev.memory if prev else None, limits=stale)
        io = read_io(d, self._devices) if ctrls is None or "io" in ctrls else None
        pids = None
        if ctrls is None or "pids" in ctrls:
            pids = read_pids(d, prev.pids if prev else None, moved=moved, limits=stale)
        stat = flat(datas[2])
        sample = CgroupSample(
            path=path,
            inode=inode,
            monotonic_ns=mono,
            wall_ns=wall,
            cpu=cpu,
            memory=memory,
            io=io,
            pids=pids,
            pressure=pressure,
            populated=populated,
            frozen=frozen,
            stat=frozen_map(stat),
        )
        self._remember(sample, prev)
        return sample

    # -- hybrid and legacy ---------------------------------------------------------------
    def _read_v1(
        self,
        path: str,
        mono: int,
        wall: int,
        ref: CgroupDir,
        member_pid: int | None,
        used: list[CgroupDir],
    ) -> CgroupSample:
        paths = self._resolved(path, ref, member_pid, mono)
        dirs: dict[str, CgroupDir | None] = {}

        def open_ctrl(ctrl: str) -> CgroupDir | None:
            rel = paths.get(ctrl)
            if rel is None:
                return None
            absolute = self._v1_abs(ctrl, rel)
            if absolute == ref.path:
                return ref
            if absolute in dirs:  # co-mounted controllers (cpu,cpuacct) share a directory
                return dirs[absolute]
            try:
                d: CgroupDir | None = self._dirs.get(absolute, mono)
            except (Vanished, OSError):
                # Moved or removed in that hierarchy: resolve again next time.
                self._cache.pop(path, None)
                d = None
            if d is not None:
                used.append(d)
            dirs[absolute] = d
            return d

        populated = frozen = None
        stat = v2_cpu = None
        if self._kind is LayoutKind.HYBRID:
            datas = ref.read_many(self._hybrid_files)
            populated, frozen = events(datas[0])
            stat = flat(datas[1])
            v2_cpu = flat(datas[2])
            psi = datas[3:]
        else:
            psi = ref.read_many(self._psi)
        pressure = pressure_sample(self._psi, psi, ref.unsupported) if self._psi else None
        prev = self._previous(path, ref.ino)
        if prev is not None and (prev.populated != populated or prev.v1_paths is not paths):
            prev = None  # filled or emptied, or found elsewhere: read whole

        cpu_d = open_ctrl("cpu")
        need_acct = v2_cpu is None or "usage_usec" not in v2_cpu
        acct_d = open_ctrl("cpuacct") if need_acct else None
        prev_cpu = prev.cpu if prev is not None else None
        cpu: CpuSample | None
        if cpu_d is None and acct_d is None:
            cpu = cpu_sample(v2_cpu)
        else:
            cpu = read_cpu_v1(cpu_d, acct_d, v2_cpu, prev_cpu, limits=self._limits_stale(cpu_d))
        moved = _moved(prev_cpu, cpu)
        mem_d = open_ctrl("memory")
        memory = None
        if mem_d is not None:
            memory = read_memory_v1(mem_d, self._memsw, prev.memory if prev else None,
                                    moved=moved, limits=self._limits_stale(mem_d))
        pids_d = open_ctrl("pids")
        pids = None
        if pids_d is not None:
            pids = read_pids(pids_d, prev.pids if prev else None, moved=moved,
                             limits=self._limits_stale(pids_d))
        blk_d = open_ctrl("blkio")
        io: tuple[IoDeviceSample, ...] | None = None
        if blk_d is not None:
            io = read_io_v1(blk_d, self._devices, prev is not None) if moved or prev is None \
                else prev.io
        frz_d = open_ctrl("freezer")
        v1_frozen = read_freezer_v1(frz_d) if frz_d is not None else None
        if v1_frozen is not None:
            # Either freezer freezes the tasks; hybrid hosts have both.
            frozen = v1_frozen or bool(frozen)
        sample = CgroupSample(
            path=path,
            inode=ref.ino,
            monotonic_ns=mono,
            wall_ns=wall,
            cpu=cpu,
            memory=memory,
            io=io,
            pids=pids,
            pressure=pressure,
            populated=populated,
            frozen=frozen,
            stat=frozen_map(stat),
            v1_paths=paths,
        )
        self._remember(sample, prev)
        return sample

    # -- v1 path resolution --------------------------------------------------------------
    def _resolved(
        self, path: str, ref: CgroupDir, member_pid: int | None, now_ns: int
    ) -> Mapping[str, str]:
        e = self._cache.get(path)
        if (
            e is not None
            and e.inode == ref.ino
            and (member_pid is None or member_pid == e.pid)
            and now_ns - e.at_ns < _RESOLVE_TTL_NS
        ):
            return e.paths
        if e is not None:  # a new incarnation or a new member: its v1 directories may differ
            for ctrl, rel in e.paths.items():
                self._dirs.drop(self._v1_abs(ctrl, rel))
        paths, pid = self._resolve(path, member_pid, ref)
        if len(self._cache) >= _CACHE_MAX:
            self._cache.clear()
        self._cache[path] = _Resolved(ref.ino, pid, now_ns, paths)
        return paths

    def _resolve(
        self, path: str, member_pid: int | None, ref: CgroupDir
    ) -> tuple[Mapping[str, str], int | None]:
        out: dict[str, str] = {}
        if self._ref_key != "unified":
            out[self._ref_key] = path
        pid = member_pid
        if pid is None:
            pid = parsed(parse_procs_first, ref.read("cgroup.procs"))
        used_pid = None
        if pid is not None:
            member = self._proc_cgroups(pid)
            if member is not None and self._from_member(path, member, out):
                used_pid = pid
        for ctrl, root in self._v1_roots.items():
            if ctrl in out:
                continue
            for cand in self._candidates(path, ctrl):
                if os.path.isdir(root + ("" if cand == "/" else cand)):
                    out[ctrl] = cand
                    break
        return (MappingProxyType(out) if out else _NO_PATHS), used_pid

    def _from_member(self, path: str, member: dict[str, str], out: dict[str, str]) -> bool:
        """Fill `out` from a member's /proc/<pid>/cgroup; False when the pid is elsewhere."""
        at = member.get(self._ref_key)
        if at is None:
            return False
        base = path.rstrip("/")
        if at == path:
            suffix = ""
        elif at.startswith(base + "/"):
            suffix = at[len(base) :]  # the member sits in a descendant: strip that part
        else:
            return False
        for ctrl in self._v1_roots:
            p = member.get(ctrl)
            if p is None or ctrl in out:
                continue
            if suffix:
                if not p.endswith(suffix):
                    continue
                p = p[: len(p) - len(suffix)] or "/"
            out[ctrl] = p
        return True

    def _candidates(self, path: str, ctrl: str) -> list[str]:
        cands = [path]
        own_ref = self._anchor.get(self._ref_key)
        own = self._anchor.get(ctrl)
        if own_ref is not None and own is not None and own != own_ref:
            base = own_ref.rstrip("/")
            if path == own_ref or path.startswith(base + "/") or base == "":
                rest = path[len(base) :]
                cands.append((own.rstrip("/") + rest) or "/")
        return cands

    def _proc_cgroups(self, pid: int | str) -> dict[str, str] | None:
        return parsed(parse_proc_cgroup, read_file(f"{self._proc}/{pid}/cgroup"))

    def _own_cgroups(self) -> dict[str, str]:
        return self._proc_cgroups("self") or {}

    @staticmethod
    def _gone(dir_path: str, inode: int) -> bool:
        try:
            return os.stat(dir_path).st_ino != inode
        except OSError:
            return True


def _moved(prev: CpuSample | None, cpu: CpuSample | None) -> bool:
    """The cgroup may have run a task since `prev`: its CPU usage moved, or is not known."""
    if prev is None or cpu is None or cpu.usage_usec is None:
        return True
    return cpu.usage_usec != prev.usage_usec


def _legacy_ref_key(layout: CgroupLayout) -> str:
    # Mirrors CgroupLayout.reference_root's choice on legacy hosts.
    for ctrl in ("cpuacct", "cpu", "memory", "pids"):
        if ctrl in layout.v1:
            return ctrl
    return next(iter(layout.v1))
