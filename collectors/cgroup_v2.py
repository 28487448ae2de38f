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
from collections.abc import Collection, Mapping
from types import MappingProxyType

from collectors.blockdev import BlockDevices
from collectors.parsers import (
    ParseError,
    parse_cpu_max,
    parse_events,
    parse_flat,
    parse_io_stat,
    parse_pressure,
    parse_single,
)
from collectors.samples import (
    EMPTY,
    CpuSample,
    IoDeviceSample,
    MemorySample,
    PidsSample,
    Pressure,
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
#: Opening the directory itself fails with these when the cgroup is gone.
DIR_VANISHED = frozenset({errno.ENOENT, errno.ENODEV, errno.ENOTDIR})

PSI_KINDS = ("cpu", "memory", "io", "irq")


class Vanished(Exception):
    """The cgroup was removed while it was being read."""


class _Unsupported:
    """Marker returned by read_psi for EOPNOTSUPP."""


UNSUPPORTED = _Unsupported()


class CgroupDir:
    """An open cgroup directory; files are read relative to it. Close it (or use `with`)."""

    __slots__ = ("fd", "missing", "path")

    def __init__(self, path: str) -> None:
        """Raises Vanished when the directory is gone, OSError for other failures."""
        self.path = path
        self.missing = False
        try:
            self.fd = os.open(path, _O_DIR)
        except OSError as e:
            if e.errno in DIR_VANISHED:
                raise Vanished(path) from None
            raise

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def __enter__(self) -> CgroupDir:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def read(self, name: str) -> bytes | None:
        """The file's bytes; None when absent or unreadable. Raises Vanished on ENODEV."""
        try:
            fd = os.open(name, _O_FILE, dir_fd=self.fd)
        except OSError as e:
            if e.errno == _ENOENT:
                self.missing = True
            elif e.errno == _ENODEV:
                raise Vanished(self.path) from None
            return None
        try:
            data = os.read(fd, _BUF)
            if len(data) >= _MAYBE_MORE:
                data = _read_rest(fd, data)
            return data
        except OSError as e:
            if e.errno == _ENODEV:
                raise Vanished(self.path) from None
            return None
        finally:
            os.close(fd)

    def read_psi(self, name: str) -> bytes | _Unsupported | None:
        """Like read, but EOPNOTSUPP (PSI disabled) returns UNSUPPORTED."""
        try:
            fd = os.open(name, _O_FILE, dir_fd=self.fd)
        except OSError as e:
            if e.errno == _ENOENT:
                self.missing = True
            elif e.errno == _ENODEV:
                raise Vanished(self.path) from None
            elif e.errno == _EOPNOTSUPP:
                return UNSUPPORTED
            return None
        try:
            return os.read(fd, _BUF)
        except OSError as e:
            if e.errno == _ENODEV:
                raise Vanished(self.path) from None
            if e.errno == _EOPNOTSUPP:
                return UNSUPPORTED
            return None
        finally:
            os.close(fd)

    def flat(self, name: str) -> dict[str, int] | None:
        data = self.read(name)
        if data is None:
            return None
        try:
            return parse_flat(data)
        except ParseError:
            return None

    def single(self, name: str) -> int | None:
        data = self.read(name)
        if data is None:
            return None
        try:
            return parse_single(data)
        except ParseError:
            return None


def _read_rest(fd: int, first: bytes) -> bytes:
    chunks = [first]
    while True:
        more = os.read(fd, _BUF)
        if not more:
            return b"".join(chunks)
        chunks.append(more)


def frozen_map(d: dict[str, int] | None) -> Mapping[str, int]:
    return EMPTY if not d else MappingProxyType(d)


# -- parts ---------------------------------------------------------------------------------


def read_controllers(d: CgroupDir) -> frozenset[str] | None:
    """cgroup.controllers: which controllers' interface files this cgroup has."""
    data = d.read("cgroup.controllers")
    if data is None:
        return None
    try:
        return frozenset(data.decode().split())
    except ValueError:
        return None


def read_events(d: CgroupDir) -> tuple[bool | None, bool | None]:
    data = d.read("cgroup.events")
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


def read_cpu(d: CgroupDir, with_controller: bool) -> CpuSample | None:
    """cpu.stat (always there), cpu.max and cpu.weight (only with the cpu controller)."""
    stat = d.flat("cpu.stat")
    quota = period = weight = None
    if with_controller:
        data = d.read("cpu.max")
        if data is not None:
            with contextlib.suppress(ParseError):
                quota, period = parse_cpu_max(data)
        weight = d.single("cpu.weight")
    return cpu_sample(stat, quota, period, weight)


def read_memory(d: CgroupDir) -> MemorySample | None:
    current = d.single("memory.current")
    stat = d.flat("memory.stat")
    events = d.flat("memory.events")
    peak = d.single("memory.peak")
    mn = d.single("memory.min")
    low = d.single("memory.low")
    high = d.single("memory.high")
    mx = d.single("memory.max")
    swap_current = d.single("memory.swap.current")
    swap_max = d.single("memory.swap.max")
    if current is None and stat is None and events is None and mx is None:
        return None
    return MemorySample(
        current=current,
        peak=peak,
        min=mn,
        low=low,
        high=high,
        max=mx,
        swap_current=swap_current,
        swap_max=swap_max,
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


def read_pids(d: CgroupDir, with_peak: bool = True) -> PidsSample | None:
    """pids.current/max/peak/events: the same files in cgroup2 and in the v1 pids hierarchy."""
    current = d.single("pids.current")
    mx = d.single("pids.max")
    events = d.flat("pids.events")
    peak = d.single("pids.peak") if with_peak else None
    if current is None and mx is None and events is None:
        return None
    return PidsSample(
        current=current,
        max=mx,
        peak=peak,
        events_max=None if events is None else events.get("max"),
    )


def read_pressure(d: CgroupDir, kinds: Collection[str]) -> PressureSample | None:
    """The `<kind>.pressure` files of `kinds`; None when none could be read."""
    found: dict[str, Pressure | None] = {}
    for kind in kinds:
        data = d.read_psi(f"{kind}.pressure")
        if data is UNSUPPORTED:
            return PressureSample(supported=False)
        if isinstance(data, bytes):
            try:
                found[kind] = parse_pressure(data)
            except ParseError:
                found[kind] = None
    if not found:
        return None
    return PressureSample(
        cpu=found.get("cpu"),
        memory=found.get("memory"),
        io=found.get("io"),
        irq=found.get("irq"),
    )


def psi_kinds_at(root: str) -> tuple[str, ...]:
    """The PSI files a hierarchy has, judged at its root (irq needs IRQ time accounting)."""
    return tuple(k for k in PSI_KINDS if os.path.exists(f"{root}/{k}.pressure"))
