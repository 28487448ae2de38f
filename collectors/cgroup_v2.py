"""Reading one cgroup2 directory into the parts of a CgroupSample.

Files are opened relative to an open directory fd (openat): one path component to resolve per
file instead of the whole /sys/fs/cgroup/... path, and the directory is resolved once. The
error rules (cgroup-v2-semantics.md §1.0, §1.9):

- ENOENT on a file while the directory exists: the file is absent on this kernel or
  controller, the field is None. Because openat in a removed kernfs directory also answers
  ENOENT, the caller re-checks the directory when any file was missing (`CgroupDir.missing`).
- ENODEV (on open or read): the cgroup was removed while we read it -> Vanished.
- EOPNOTSUPP on a PSI file: PSI is disabled -> PressureSample(supported=False).
- EACCES and other errors, or content that does not parse: the field is None.

CgroupDir and Vanished are shared with cgroup_v1.
"""

from __future__ import annotations

import contextlib
import errno
import os
import resource
from collections.abc import Callable, Mapping, Sequence
from types import MappingProxyType
from typing import TYPE_CHECKING, TypeVar

from collectors.parsers import (
    ParseError,
    parse_cpu_max,
    parse_events,
    parse_flat,
    parse_io_stat,
    parse_pressure,
)
from collectors.samples import (
    EMPTY,
    UNLIMITED,
    CpuSample,
    IoDeviceSample,
    MemorySample,
    PidsSample,
    PressureSample,
)

_O_FILE = os.O_RDONLY | os.O_CLOEXEC
_O_DIR = os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC
#: A read this long may be partial (multi-record seq files): keep reading until EOF.
_MAYBE_MORE = 4000
_BUF = 65536

_ENODEV = errno.ENODEV
_ENOENT = errno.ENOENT
_EOPNOTSUPP = errno.EOPNOTSUPP
_EMFILE = errno.EMFILE
#: Opening the directory itself fails with these when the cgroup is gone.
DIR_VANISHED = frozenset({errno.ENOENT, errno.ENODEV, errno.ENOTDIR})

PSI_KINDS = ("cpu", "memory", "io", "irq")

T = TypeVar("T")

if TYPE_CHECKING:  # blockdev reads its files with read_file() from here
    from collectors.blockdev import BlockDevices


class Vanished(Exception):
    """The cgroup was removed while it was being read."""


class CgroupDir:
    """A cgroup directory fd; files are read relative to it (openat).

    Either opened here (`owned`, closed by close()) or borrowed from OpenDirs, which keeps it
    open between collection cycles together with its files' fds (`files`, name -> fd): a kept
    file is re-read with one pread at offset 0 (kernfs regenerates a seq file read from
    offset 0) instead of openat + read + close. `missing` records an ENOENT (absent file, or
    a directory removed meanwhile: the caller decides), `unsupported` an EOPNOTSUPP (PSI
    disabled).
    """

    __slots__ = (
        "emfile",
        "fd",
        "files",
        "fresh",
        "ino",
        "missing",
        "owned",
        "path",
        "pool",
        "unsupported",
        "used_ns",
    )

    def __init__(self, path: str, fd: int | None = None, ino: int = 0) -> None:
        """Opens `path` unless `fd` is given. Raises Vanished when the directory is gone,
        OSError for other failures."""
        self.path = path
        self.ino = ino
        self.missing = False
        self.unsupported = False
        #: A file could not be opened for want of fds (the caller should give some back).
        self.emfile = False
        self.used_ns = 0
        #: Kept file fds by name (only for a directory kept by OpenDirs, which counts them).
        self.files: dict[str, int] | None = None
        self.pool: OpenDirs | None = None
        #: Opened for this read (not a kept fd that may be stale).
        self.fresh = fd is None
        if fd is not None:
            self.fd = fd
            self.owned = False
            return
        self.owned = True
        try:
            self.fd = os.open(path, _O_DIR)
        except OSError as e:
            if e.errno in DIR_VANISHED:
                raise Vanished(path) from None
            raise

    def close(self) -> None:
        if self.owned and self.fd >= 0:
            if self.files:
                for fd in self.files.values():
                    os.close(fd)
                self.files.clear()
            os.close(self.fd)
            self.fd = -1

    def __enter__(self) -> CgroupDir:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def read_many(self, names: Sequence[str], keep: bool = True) -> list[bytes | None]:
        """Each file's bytes, None when absent or unreadable. Raises Vanished on ENODEV.

        One call for a controller's files: this loop is the hot path of every collection.
        A file of a kept directory stays open while the pool has room (one pread per read);
        `keep` False: files read seldom (limits) are not kept open if they are not already.
        """
        out: list[bytes | None] = []
        dfd = self.fd
        files = self.files
        pool = self.pool if keep else None
        _open, _pread, _close = os.open, os.pread, os.close
        for name in names:
            fd = files.get(name) if files is not None else None
            keep = fd is not None
            if fd is None:
                try:
                    fd = _open(name, _O_FILE, dir_fd=dfd)
                except OSError as e:
                    self._failed(e.errno)
                    out.append(None)
                    continue
                if files is not None and pool is not None and pool.take():
                    files[name] = fd
                    keep = True
            try:
                data: bytes | None = _pread(fd, _BUF, 0)
                if len(data) >= _MAYBE_MORE:  # type: ignore[arg-type]
                    data = _read_rest(fd, data)  # type: ignore[arg-type]
            except OSError as e:
                self._failed(e.errno)
                data = None
            finally:
                if not keep:
                    _close(fd)
            out.append(data)
        return out

    def _failed(self, err: int | None) -> None:
        if err == _ENOENT:
            self.missing = True
        elif err == _ENODEV:
            raise Vanished(self.path)
        elif err == _EOPNOTSUPP:
            self.unsupported = True
        elif err == _EMFILE:
            self.emfile = True

    def read(self, name: str, keep: bool = True) -> bytes | None:
        return self.read_many((name,), keep)[0]

    def flat(self, name: str, keep: bool = True) -> dict[str, int] | None:
        return flat(self.read_many((name,), keep)[0])

    def single(self, name: str, keep: bool = True) -> int | None:
        return single(self.read_many((name,), keep)[0])


class OpenDirs:
    """Directory fds, and their files' fds, kept open between collection cycles, keyed by
    the directory's absolute path.

    Each cycle reads the same cgroups again; keeping their directories open saves an open
    (a full path walk) and a close per hierarchy and cgroup, keeping their files open saves
    an open and a close per file (kernfs answers a pread at offset 0 with fresh content).
    Bounded: at most `max_open` fds in all (directories and files) and three quarters of
    RLIMIT_NOFILE (re-read when full, since a daemon may raise it later); when full,
    directories and files are opened per read instead (evicting would thrash on cyclic scans).
    A kept cgroup file costs ~6 KB of kernel memory (its seq_file buffer), charged to the
    agent's cgroup: files read seldom (limits) are not kept.
    Entries unused for IDLE_S are closed, so removed cgroups are not kept pinned. A cached fd
    of a directory that was removed and created again is detected by its inode (callers
    compare) and replaced. Not thread-safe: CgroupReader serialises access.
    """

    IDLE_S = 120.0
    SWEEP_EVERY_S = 30.0

    def __init__(
        self,
        max_open: int,
        on_keep: Callable[[str], None] | None = None,
        on_drop: Callable[[str], None] | None = None,
    ) -> None:
        """`on_keep(path)` / `on_drop(path)`: a directory starts / stops being kept."""
        self._max = max_open
        self._on_keep = on_keep
        self._on_drop = on_drop
        self._dirs: dict[str, CgroupDir] = {}
        #: Fds kept: the directories' and their files'.
        self._n = 0
        self._cap = self._compute_cap()
        self._next_sweep = 0

    def _compute_cap(self) -> int:
        soft, _hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        if soft == resource.RLIM_INFINITY:
            return self._max
        return max(0, min(self._max, soft - soft // 4))

    def __len__(self) -> int:
        """Fds kept (directories and files)."""
        return self._n

    @property
    def dirs(self) -> int:
        return len(self._dirs)

    def take(self) -> bool:
        """Room for one more kept fd (counted as taken when True)."""
        if self._n < self._cap:
            self._n += 1
            return True
        return False

    def get(self, path: str, now_ns: int, ino: int | None = None) -> CgroupDir:
        """The directory, from the cache when its inode is still `ino` (None: not checked).
        Raises Vanished / OSError like CgroupDir()."""
        if now_ns >= self._next_sweep:
            self.sweep(now_ns)
        d = self._dirs.get(path)
        if d is not None:
            if ino is None or d.ino == ino:
                d.used_ns = now_ns
                d.missing = d.unsupported = d.fresh = d.emfile = False
                return d
            self.drop(path)
        try:
            d = CgroupDir(path)
        except OSError as e:
            if e.errno != errno.EMFILE or not self.shrink(now_ns):
                raise
            d = CgroupDir(path)
        d.ino = os.fstat(d.fd).st_ino
        if self.take() or (self._recap() and self.take()):
            d.owned = False  # closed by drop()
            d.used_ns = now_ns
            d.files = {}
            d.pool = self
            self._dirs[path] = d
            if self._on_keep is not None:
                self._on_keep(path)
        return d

    def _recap(self) -> bool:
        self._cap = self._compute_cap()
        return self._n < self._cap

    def shrink(self, now_ns: int) -> bool:
        """Out of fds (EMFILE on a directory here, or on a file: CgroupDir.emfile): give back
        the older half of the kept directories with their files (not those of the read in
        progress) and stop growing. True when something was closed."""
        idle = sorted((d.used_ns, p) for p, d in self._dirs.items() if d.used_ns != now_ns)
        for _used, path in idle[: max(1, len(idle) // 2)]:
            self.drop(path)
        self._max = self._cap = self._n
        return bool(idle)

    def drop(self, path: str) -> None:
        """Close a kept directory's fd and its files' fds."""
        d = self._dirs.pop(path, None)
        if d is not None:
            self._n -= 1 + len(d.files or ())
            d.owned = True
            d.close()
            if self._on_drop is not None:
                self._on_drop(path)

    def sweep(self, now_ns: int) -> None:
        self._next_sweep = now_ns + int(self.SWEEP_EVERY_S * 1e9)
        oldest = now_ns - int(self.IDLE_S * 1e9)
        for path in [p for p, d in self._dirs.items() if d.used_ns < oldest]:
            self.drop(path)

    def close(self) -> None:
        for path in list(self._dirs):
            self.drop(path)


def read_file(path: str) -> bytes | None:
    """A small file (procfs, sysfs) by absolute path; None when it cannot be read."""
    try:
        fd = os.open(path, _O_FILE)
    except OSError:
        return None
    try:
        return os.read(fd, _BUF)
    except OSError:
        return None
    finally:
        os.close(fd)


def _read_rest(fd: int, first: bytes) -> bytes:
    chunks = [first]
    at = len(first)
    while True:
        more = os.pread(fd, _BUF, at)
        if not more:
            return b"".join(chunks)
        chunks.append(more)
        at += len(more)


def parsed(parse: Callable[[bytes], T], data: bytes | None) -> T | None:
    """parse(data); None for no data or data that does not parse (a field we cannot trust)."""
    if data is None:
        return None
    try:
        return parse(data)
    except ParseError:
        return None


def flat(data: bytes | None) -> dict[str, int] | None:
    return parsed(parse_flat, data)


def single(data: bytes | None) -> int | None:
    """parse_single, None for no data or data that does not parse (inlined: hot path)."""
    if data is None:
        return None
    tok = data.strip()
    if tok == b"max":
        return UNLIMITED
    try:
        return int(tok)
    except ValueError:
        return None


def frozen_map(d: dict[str, int] | None) -> Mapping[str, int]:
    return EMPTY if not d else MappingProxyType(d)


# -- parts ---------------------------------------------------------------------------------


def parse_controllers(data: bytes | None) -> frozenset[str] | None:
    """cgroup.controllers: which controllers' interface files this cgroup has."""
    if data is None:
        return None
    try:
        return frozenset(data.decode().split())
    except ValueError:
        return None


def events(data: bytes | None) -> tuple[bool | None, bool | None]:
    """cgroup.events (populated, frozen), (None, None) when unreadable."""
    if data is None:
        return None, None
    try:
        return parse_events(data)
    except ParseError:
        return None, None


def cpu_sample(
    stat: Mapping[str, int] | None,
    quota: int | None = None,
    period: int | None = None,
    weight: int | None = None,
) -> CpuSample | None:
    if stat is None and quota is None and weight is None:
        return None
    s = stat or EMPTY
    return CpuSample(
        usage_usec=s.get("usage_usec"),
        user_usec=s.get("user_usec"),
        system_usec=s.get("system_usec"),
        nr_periods=s.get("nr_periods"),
        nr_throttled=s.get("nr_throttled"),
        throttled_usec=s.get("throttled_usec"),
        nr_bursts=s.get("nr_bursts"),
        burst_usec=s.get("burst_usec"),
        max_quota_usec=quota,
        max_period_usec=period,
        weight=weight,
    )


def cpu_limits(
    d: CgroupDir, prev: CpuSample | None = None, *, limits: bool = True
) -> tuple[int | None, int | None, int | None]:
    """(quota, period, weight) from cpu.max and cpu.weight (files of the cpu controller);
    from `prev` unread when `limits` is False."""
    if not limits and prev is not None:
        return prev.max_quota_usec, prev.max_period_usec, prev.weight
    max_b, weight_b = d.read_many(("cpu.max", "cpu.weight"), keep=False)
    quota = period = None
    if max_b is not None:
        with contextlib.suppress(ParseError):
            quota, period = parse_cpu_max(max_b)
    return quota, period, single(weight_b)


#: Read at every read (they change without CPU in the cgroup: reclaim, writeback, charges from
#: outside); memory.events also because the kernel's notification of it is asynchronous.
_MEMORY_FILES = (
    "memory.current",
    "memory.peak",
    "memory.swap.current",
    "memory.stat",
    "memory.events",
)
#: Limits: change only by a write to the directory (see CgroupReader).
_MEMORY_LIMITS = ("memory.min", "memory.low", "memory.high", "memory.max", "memory.swap.max")


def read_memory(
    d: CgroupDir, prev: MemorySample | None = None, *, limits: bool = True
) -> MemorySample | None:
    """`limits` False with a `prev`: the limits are taken from it unread."""
    read_limits = limits or prev is None
    datas = d.read_many(_MEMORY_FILES)
    if read_limits:
        datas += d.read_many(_MEMORY_LIMITS, keep=False)
    cur, peak, swc, stat_b, events_b = datas[:5]
    stat = flat(stat_b)
    events = flat(events_b)
    current = single(cur)
    if read_limits:
        mn, low, high, mx, swm = (single(b) for b in datas[5:])
    else:
        assert prev is not None
        mn, low, high, mx, swm = prev.min, prev.low, prev.high, prev.max, prev.swap_max
    if current is None and stat is None and events is None and mx is None:
        return None
    return MemorySample(
        current=current,
        peak=single(peak),
        min=mn,
        low=low,
        high=high,
        max=mx,
        swap_current=single(swc),
        swap_max=swm,
        stat=frozen_map(stat),
        events=frozen_map(events),
    )


def read_io(d: CgroupDir, devices: BlockDevices) -> tuple[IoDeviceSample, ...] | None:
    data = d.read("io.stat")
    if data is None:
        return None
    try:
        lines = parse_io_stat(data)
    except ParseError:
        # A truncated or garbled io.stat (kernel one-page limit): no IO rather than wrong IO.
        return None
    name = devices.name
    return tuple(
        IoDeviceSample(
            major=ln.major,
            minor=ln.minor,
            device=name(ln.major, ln.minor),
            rbytes=ln.known.get("rbytes"),
            wbytes=ln.known.get("wbytes"),
            rios=ln.known.get("rios"),
            wios=ln.known.get("wios"),
            dbytes=ln.known.get("dbytes"),
            dios=ln.known.get("dios"),
            extra=ln.extra,
        )
        for ln in lines
    )


def read_pids(
    d: CgroupDir, prev: PidsSample | None = None, *, moved: bool = True, limits: bool = True
) -> PidsSample | None:
    """pids.current/max/events/peak: the same files in cgroup2 and in the v1 pids hierarchy.

    pids.current is always read (a task moved out changes it without CPU in the cgroup).
    With a `prev`: pids.events (a refused fork) and pids.peak (a fork, or a task moved in:
    a write to the directory) are taken from it unread unless `moved` (CPU used since) or
    the current count exceeds the last peak; pids.max unless `limits`."""
    read_limits = limits or prev is None
    current = single(d.read("pids.current"))
    read_counters = (
        moved or prev is None or (current or 0) > (prev.peak or prev.current or 0) or limits
    )
    names = ("pids.events", "pids.peak") if read_counters else ()
    got = dict(zip(names, d.read_many(names, keep=moved), strict=True))
    if read_limits:
        got["pids.max"] = d.read("pids.max", keep=False)
    if read_limits:
        limit = single(got["pids.max"])
    else:
        assert prev is not None
        limit = prev.max
    if read_counters:
        events = flat(got["pids.events"])
        events_max = None if events is None else events.get("max")
        peak = single(got["pids.peak"])
        found = events is not None
    else:
        assert prev is not None
        events_max, peak, found = prev.events_max, prev.peak, True
    if current is None and limit is None and not found:
        return None
    return PidsSample(current=current, max=limit, peak=peak, events_max=events_max)


def pressure_sample(
    files: Sequence[str], datas: Sequence[bytes | None], unsupported: bool
) -> PressureSample | None:
    """From the contents of `files` (`<kind>.pressure` names); None when none was read."""
    if unsupported:
        return PressureSample(supported=False)
    found = {f: parsed(parse_pressure, d) for f, d in zip(files, datas, strict=True)}
    if not any(found.values()):
        return None
    return PressureSample(
        cpu=found.get("cpu.pressure"),
        memory=found.get("memory.pressure"),
        io=found.get("io.pressure"),
        irq=found.get("irq.pressure"),
    )


def psi_files_at(root: str) -> tuple[str, ...]:
    """The PSI files a hierarchy has, judged at its root (irq needs IRQ time accounting)."""
    names = (f"{k}.pressure" for k in PSI_KINDS)
    return tuple(n for n in names if os.path.exists(f"{root}/{n}"))
