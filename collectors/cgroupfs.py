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
path resolution, since it lives in the reference directory itself. A cgroup's v1 paths can
differ between hierarchies: V1Paths (v1_paths) resolves and caches them.

Speed (tests/bench/bench_collectors.py): each controller's files are read in one batch with
openat() relative to a directory fd, and the directory fds and the files' fds are kept open
between reads (OpenDirs: bounded, swept when idle, given back on EMFILE, closed by release()):
a kept file is re-read with one pread at offset 0. The inode comes from the fstat done when a
directory is opened; a kept fd of a cgroup removed since answers ENOENT/ENODEV for every file,
which triggers one stat and, for a cgroup created again at the same path, a read on a fresh
fd. Thread-safe (one lock per reader).

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
- everything: first, and when the v1 paths were resolved again;
- every counter, and the limits only as above: when `populated` changed (the final read of
  a cgroup that emptied is the last chance to read its counters, and the limits cost a
  quarter of its files), and at least every FULL_READ_EVERY reads and FULL_READ_AFTER_S
  seconds, whichever is longer.

An idle cgroup is re-read by compare first (collectors.idle_path): when its last quiet read's
files read the same bytes, the last sample stands, at the new time."""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

from collectors.blockdev import BlockDevices
from collectors.cgroup_dir import DIR_VANISHED, CgroupDir, Vanished, frozen_flat
from collectors.cgroup_v1 import read_cpu_v1, read_freezer_v1, read_io_v1, read_memory_v1
from collectors.cgroup_v2 import (
    cpu_limits,
    cpu_sample,
    events,
    parse_controllers,
    pressure_sample,
    psi_files_at,
    read_io,
    read_memory,
    read_pids,
)
from collectors.idle_path import IdlePath
from collectors.idle_path import moved as cpu_moved
from collectors.last_read import FULL_READ_AFTER_S, FULL_READ_EVERY, LastRead
from collectors.layout import CgroupLayout, LayoutKind
from collectors.open_dirs import OpenDirs
from collectors.samples import (
    EMPTY,
    CgroupSample,
    CpuSample,
    IoDeviceSample,
    PressureSample,
)
from collectors.v1_paths import RESOLVE_TTL_S, V1Paths
from collectors.written_dirs import WrittenDirs

__all__ = ["FULL_READ_AFTER_S", "FULL_READ_EVERY", "RESOLVE_TTL_S", "CgroupReader"]

_PSI_OFF = PressureSample(supported=False)


class CgroupReader:
    def __init__(
        self,
        layout: CgroupLayout,
        *,
        sys_dev_block: Path = Path("/sys/dev/block"),
        proc_root: Path = Path("/proc"),
        max_open_dirs: int = 16384,
        full_read_after_s: float = FULL_READ_AFTER_S,
    ) -> None:
        """`max_open_dirs`: fds kept open between reads, directories and their files
        (0: none), see OpenDirs. `full_read_after_s`: see FULL_READ_AFTER_S."""
        self.layout = layout
        self._kind = layout.kind
        self._ref_root = str(layout.reference_root)
        self._devices = BlockDevices(sys_dev_block)
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
        self._last: dict[str, LastRead] = {}
        self._whole_after_ns = int(full_read_after_s * 1e9)
        # The kept directories whose limits are read only when written to.
        if self._kind is LayoutKind.UNIFIED:
            limit_roots: tuple[str, ...] = (self._ref_root,)
        else:
            limit_roots = tuple(
                root for ctrl, root in self._v1_roots.items() if ctrl in ("cpu", "memory", "pids")
            )
        self._written = WrittenDirs(limit_roots)
        self._dirs = OpenDirs(
            max_open_dirs, on_keep=self._written.watch, on_drop=self._written.unwatch
        )
        self._paths = V1Paths(layout, str(proc_root), self._dirs.drop)
        self.idle = IdlePath(self._dirs, self._written, self._psi)
        # The daemon reads from a worker thread while control code may ask for v1_paths.
        self._lock = threading.Lock()

    # -- public --------------------------------------------------------------------------
    def read(
        self, path: str, *, member_pid: int | None = None, in_pass: bool = False
    ) -> CgroupSample:
        """Everything about the cgroup at `path` (relative to layout.reference_root).
        `in_pass`: one of many reads after begin_pass(), which took the writes to directories
        for all of them (a limit written during the pass shows at the next)."""
        mono = time.monotonic_ns()
        wall = time.time_ns()
        with self._lock:
            if not in_pass:
                self._written.drain()
            return self._read(path, member_pid, mono, wall)

    def begin_pass(self) -> None:
        """Before reading many cgroups with in_pass=True: take the writes to directories once."""
        with self._lock:
            self._written.drain()

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
                return dict(self._paths.resolved(path, ref, member_pid, now))
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
            for dir_path in self._paths.candidate_dirs(path):
                self._dirs.drop(dir_path)

    @property
    def kept_fds(self) -> int:
        """Fds kept open between reads: directories and their files, in every hierarchy."""
        return len(self._dirs)

    def close(self) -> None:
        """Close the fds kept between reads (reading again reopens them)."""
        with self._lock:
            self._dirs.close()
            self._last.clear()
            self._written.close()

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
        last = self._last.get(path)
        stashed: list[CgroupDir] = []
        plan = last.plan if last is not None else None
        if last is not None and plan is not None:
            whole = last.due(mono, self._whole_after_ns)
            same, stashed = self.idle.reread(path, last.sample, plan, whole, member_pid, mono)
            if same:
                last.partial_reads += 1
                last.sample = last.sample.at(mono, wall)
                return last.sample
        compared = plan.datas if plan is not None else None
        try:
            sample = self._read_files(path, member_pid, mono, wall, last)
            now = self._last.get(path)
            if plan is not None and now is not None:
                self.idle.carry(plan, now.plan, compared, stashed)
            return sample
        finally:
            for d in stashed:
                d.prefetched = None

    def _read_files(
        self, path: str, member_pid: int | None, mono: int, wall: int, last: LastRead | None
    ) -> CgroupSample:
        ref_path = self._ref_root if path == "/" else self._ref_root + path
        before = last.sample if last is not None else None
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
                        self._paths.invalidate(path)  # resolve the v1 paths again next time
                for d in used:
                    self._written.read(d.path)
                now = self._last.get(path)
                if now is not None:
                    now.plan = self.idle.after_read(
                        path, sample, before, now.partial_reads > 0, now.plan, used, member_pid,
                        mono)
                return sample
            except Vanished:
                self._forget(path, ref_path)
                if ref.fresh:
                    return CgroupSample(path, ref.ino, mono, wall, vanished=True)
            finally:
                for d in used:
                    d.record = None  # after_read took it: no list is kept per directory
                    d.close()
        return CgroupSample(path, None, mono, wall, vanished=True)

    def _forget(self, path: str, ref_path: str) -> None:
        """Drop what is kept about a cgroup that is gone."""
        self.idle.quiet.forget(path)
        self._dirs.drop(ref_path)
        self._last.pop(path, None)
        self._paths.forget(path)

    def _limits_stale(self, d: CgroupDir | None) -> bool:
        """The directory's limits must be read: written to since its last read, or not
        watched."""
        return d is not None and self._written.stale(d.path)

    def _previous(self, path: str, inode: int | None, mono: int
                  ) -> tuple[CgroupSample | None, bool]:
        """(the last sample, to stand for files not read now (None: read everything),
        refresh: every counter file is due again, LastRead.due; the limits of a watched
        directory change only by a write, which WrittenDirs sees)."""
        last = self._last.get(path)
        if last is None or last.sample.inode != inode:
            return None, False
        return last.sample, last.due(mono, self._whole_after_ns)

    def _remember(self, sample: CgroupSample, prev: CgroupSample | None,
                  refresh: bool = False) -> CgroupSample:
        """Keep `sample` as the cgroup's last; returned sharing the last one's equal values."""
        last = self._last.get(sample.path)
        if last is not None and last.sample.inode != sample.inode:
            last = None  # another incarnation at the path: nothing of it stands
        if last is not None:
            sample = sample.sharing(last.sample)
        if prev is None or last is None or refresh:
            # A whole read: the plan may stay (its bytes are set by IdlePath.carry).
            plan = last.plan if last is not None else None
            self._last[sample.path] = LastRead(sample, 0, plan, sample.monotonic_ns)
        else:
            last.sample = sample
            last.partial_reads += 1
        return sample

    def _pressure(self, d: CgroupDir, datas: list[bytes | None]) -> PressureSample | None:
        """The PSI files' sample; parsed only when their bytes changed since the last read."""
        if not self._psi:
            return None
        if d.unsupported:
            return _PSI_OFF
        return d.memo("psi", tuple(datas), self._parse_pressure)

    def _parse_pressure(self, datas: tuple[bytes | None, ...]) -> PressureSample | None:
        return pressure_sample(self._psi, datas, False)

    # -- unified -------------------------------------------------------------------------
    def _read_unified(
        self, path: str, inode: int, mono: int, wall: int, d: CgroupDir
    ) -> CgroupSample:
        datas = d.read_many(self._unified_files)
        ctrls = parse_controllers(datas[0])
        populated, frozen = d.memo("cgroup.events", datas[1], events)
        prev, refresh = self._previous(path, inode, mono)
        if prev is not None and prev.populated != populated:
            refresh = True  # filled or emptied: every counter (the limits stand unless written)
        pressure = self._pressure(d, datas[4:])
        prev_cpu = prev.cpu if prev is not None else None
        stale = self._limits_stale(d)
        quota = period = weight = None
        if ctrls is None or "cpu" in ctrls:
            quota, period, weight = cpu_limits(d, prev_cpu, limits=stale)
        cpu = cpu_sample(d.memo("cpu.stat", datas[3], frozen_flat), quota, period, weight)
        moved = refresh or cpu_moved(prev_cpu, cpu)
        memory = None
        if ctrls is None or "memory" in ctrls:
            memory = read_memory(d, prev.memory if prev else None, limits=stale)
        io = read_io(d, self._devices) if ctrls is None or "io" in ctrls else None
        pids = None
        if ctrls is None or "pids" in ctrls:
            pids = read_pids(d, prev.pids if prev else None, moved=moved, limits=stale,
                             keep=not refresh)
        stat = d.memo("cgroup.stat", datas[2], frozen_flat)
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
            stat=stat or EMPTY,
        )
        return self._remember(sample, prev, refresh)

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
        paths = self._paths.resolved(path, ref, member_pid, mono)
        dirs: dict[str, CgroupDir | None] = {}

        def open_ctrl(ctrl: str) -> CgroupDir | None:
            rel = paths.get(ctrl)
            if rel is None:
                return None
            absolute = self._paths.absolute(ctrl, rel)
            if absolute == ref.path:
                return ref
            if absolute in dirs:  # co-mounted controllers (cpu,cpuacct) share a directory
                return dirs[absolute]
            try:
                d: CgroupDir | None = self._dirs.get(absolute, mono)
            except (Vanished, OSError):
                # Moved or removed in that hierarchy: resolve again next time.
                self._paths.invalidate(path)
                d = None
            if d is not None:
                used.append(d)
            dirs[absolute] = d
            return d

        populated = frozen = None
        stat = v2_cpu = None
        if self._kind is LayoutKind.HYBRID:
            datas = ref.read_many(self._hybrid_files)
            populated, frozen = ref.memo("cgroup.events", datas[0], events)
            stat = ref.memo("cgroup.stat", datas[1], frozen_flat)
            v2_cpu = ref.memo("cpu.stat", datas[2], frozen_flat)
            psi = datas[3:]
        else:
            psi = ref.read_many(self._psi)
        pressure = self._pressure(ref, psi)
        prev, refresh = self._previous(path, ref.ino, mono)
        if prev is not None and prev.v1_paths is not paths:
            prev, refresh = None, False  # found elsewhere: read whole
        elif prev is not None and prev.populated != populated:
            refresh = True  # filled or emptied: every counter (the limits stand unless written)

        cpu_d = open_ctrl("cpu")
        need_acct = v2_cpu is None or "usage_usec" not in v2_cpu
        acct_d = open_ctrl("cpuacct") if need_acct else None
        prev_cpu = prev.cpu if prev is not None else None
        cpu: CpuSample | None
        if cpu_d is None and acct_d is None:
            cpu = cpu_sample(v2_cpu)
        else:
            cpu = read_cpu_v1(cpu_d, acct_d, v2_cpu, prev_cpu, limits=self._limits_stale(cpu_d),
                              refresh=refresh)
        moved = refresh or cpu_moved(prev_cpu, cpu)
        mem_d = open_ctrl("memory")
        memory = None
        if mem_d is not None:
            memory = read_memory_v1(
                mem_d,
                self._memsw,
                prev.memory if prev else None,
                moved=moved,
                limits=self._limits_stale(mem_d),
                keep=not refresh,  # files read every FULL_READ_EVERY reads: not worth an fd
            )
        pids_d = open_ctrl("pids")
        pids = None
        if pids_d is not None:
            pids = read_pids(pids_d, prev.pids if prev else None, moved=moved,
                             limits=self._limits_stale(pids_d), keep=not refresh)
        blk_d = open_ctrl("blkio")
        io: tuple[IoDeviceSample, ...] | None = None
        if blk_d is not None:
            io = (
                read_io_v1(blk_d, self._devices, prev is not None and not refresh)
                if moved or prev is None
                else prev.io
            )
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
            stat=stat or EMPTY,
            v1_paths=paths,
        )
        return self._remember(sample, prev, refresh)

    @staticmethod
    def _gone(dir_path: str, inode: int) -> bool:
        try:
            return os.stat(dir_path).st_ino != inode
        except OSError:
            return True


