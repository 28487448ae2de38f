"""Parsers for cgroupfs file contents (v2 and v1), pure functions on bytes.

Every parser either returns a value or raises ParseError; nothing else escapes, whatever the
input (property-tested with arbitrary bytes). Values are looked up by key, never by position
(the kernel adds keys in the middle of files over time). `max` means "no limit" and parses as
the UNLIMITED sentinel, never as an integer.

The hot path parses with bytes.split and int(bytes) (int accepts ASCII bytes directly): no
decode of whole files, no regular expressions.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

from collectors.samples import UNLIMITED, Pressure, PressureLine


class ParseError(ValueError):
    """The content does not have the expected format (truncated, garbled, unknown kind)."""


#: v1 "no limit": PAGE_COUNTER_MAX pages, i.e. LONG_MAX rounded down to the page size
#: (9223372036854771712 with 4 KiB pages). Anything at or above 2**62 is no real limit.
V1_UNLIMITED_THRESHOLD = 1 << 62


class _KeyNames(dict[bytes, str]):
    """bytes key -> str, shared: the kernel repeats the same few hundred keys in every file,
    so each is decoded (and its hash computed) once instead of once per file per cgroup."""

    def __missing__(self, key: bytes) -> str:
        if len(self) >= 20_000:  # only garbage input gets here; stay bounded
            self.clear()
        name = self[key] = key.decode()
        return name


_key_name = _KeyNames().__getitem__


def parse_flat(data: bytes) -> dict[str, int]:
    """Flat keyed (`KEY VALUE\\n` lines) with integer values: cpu.stat, memory.stat, ...

    Every non-empty line must be exactly one key and one integer.
    """
    toks = data.split()
    n = len(toks)
    if n & 1:
        raise ParseError("flat keyed: lines must be KEY VALUE")
    if data.count(b"\n") != n >> 1 or data[-1:] != b"\n":
        # Not the kernel's exact shape (blank lines, no final newline): check line by line.
        for line in data.split(b"\n"):
            if line.strip() and len(line.split()) != 2:
                raise ParseError("flat keyed: lines must be KEY VALUE")
    try:
        return dict(zip(map(_key_name, toks[0::2]), map(int, toks[1::2]), strict=True))
    except ValueError as e:  # int() of a non-number, or a key that is not UTF-8
        raise ParseError(f"flat keyed: {e}") from None


def parse_single(data: bytes) -> int:
    """A single value: an integer, or `max` (UNLIMITED). memory.max, pids.max, ..."""
    tok = data.strip()
    if tok == b"max":
        return UNLIMITED
    try:
        return int(tok)
    except ValueError:
        raise ParseError(f"single value: {tok[:40]!r}") from None


def parse_cpu_max(data: bytes) -> tuple[int, int]:
    """`cpu.max` "$MAX $PERIOD": (quota µs or UNLIMITED, period µs)."""
    toks = data.split()
    if len(toks) != 2:
        raise ParseError("cpu.max: expected two fields")
    return parse_single(toks[0]), _int(toks[1], "cpu.max period")


def parse_events(data: bytes) -> tuple[bool | None, bool | None]:
    """cgroup.events: (populated, frozen); a key the kernel does not write is None."""
    kv = parse_flat(data)
    populated = kv.get("populated")
    frozen = kv.get("frozen")
    return (
        None if populated is None else populated != 0,
        None if frozen is None else frozen != 0,
    )


def _pressure_line(toks: list[bytes]) -> PressureLine:
    if (
        len(toks) == 4
        and toks[0][:6] == b"avg10="
        and toks[1][:6] == b"avg60="
        and toks[2][:7] == b"avg300="
        and toks[3][:6] == b"total="
    ):
        # The kernel's order (the common case): no dict needed.
        try:
            return PressureLine(
                float(toks[0][6:]), float(toks[1][6:]), float(toks[2][7:]), int(toks[3][6:])
            )
        except ValueError:
            raise ParseError("PSI: bad number") from None
    vals: dict[bytes, bytes] = {}
    for tok in toks:
        k, sep, v = tok.partition(b"=")
        if not sep:
            raise ParseError("PSI: expected key=value")
        vals[k] = v
    try:
        return PressureLine(
            avg10=float(vals[b"avg10"]),
            avg60=float(vals[b"avg60"]),
            avg300=float(vals[b"avg300"]),
            total=int(vals[b"total"]),
        )
    except KeyError as e:
        raise ParseError(f"PSI: missing {e}") from None
    except ValueError:
        raise ParseError("PSI: bad number") from None


_PSI_NUM = rb"([0-9]+\.[0-9]+) avg60=([0-9]+\.[0-9]+) avg300=([0-9]+\.[0-9]+) total=([0-9]+)\n"
#: The kernel's exact shape: both lines, in order (the common case: one regex, no splits).
_PSI_BOTH = re.compile(rb"some avg10=" + _PSI_NUM + rb"full avg10=" + _PSI_NUM)


_NO_STALL = PressureLine(0.0, 0.0, 0.0, 0)


def _psi_line(a: bytes, b: bytes, c: bytes, total: bytes) -> PressureLine:
    """Most cgroups are not stalled: their lines share one object, or at least the zero
    floats (a float parsed from text is a new object each time, 24 bytes; a cgroup holds six
    lines of three)."""
    if a == b == c == b"0.00":
        return _NO_STALL if total == b"0" else PressureLine(0.0, 0.0, 0.0, int(total))
    return PressureLine(float(a), float(b), float(c), int(total))


def parse_pressure(data: bytes) -> Pressure:
    """`some avg10=.. avg60=.. avg300=.. total=..` and optionally the same for `full`."""
    m = _PSI_BOTH.fullmatch(data)
    if m is not None:
        a, b, c, d, e, f, g, h = m.groups()
        return Pressure(some=_psi_line(a, b, c, d), full=_psi_line(e, f, g, h))
    some: PressureLine | None = None
    full: PressureLine | None = None
    for line in data.split(b"\n"):
        toks = line.split()
        if not toks:
            continue
        kind = toks[0]
        if kind == b"some":
            some = _pressure_line(toks[1:])
        elif kind == b"full":
            full = _pressure_line(toks[1:])
        else:
            raise ParseError("PSI: line is neither some nor full")
    if some is None and full is None:
        raise ParseError("PSI: empty")
    return Pressure(some=some, full=full)


def parse_nested(data: bytes) -> dict[str, dict[str, str]]:
    """Nested keyed (`KEY SUB=VAL SUB=VAL...` lines; io.max, memory.numa_stat, rdma.*):
    values kept as text (`max` stays `max`); a line with a key and no pairs maps to {}."""
    out: dict[str, dict[str, str]] = {}
    try:
        for line in data.decode().split("\n"):
            toks = line.split()
            if not toks:
                continue
            subs: dict[str, str] = {}
            for tok in toks[1:]:
                k, sep, v = tok.partition("=")
                if not sep or not k:
                    raise ParseError("nested keyed: expected SUB=VALUE")
                subs[k] = v
            out[toks[0]] = subs
    except UnicodeDecodeError:
        raise ParseError("nested keyed: not UTF-8") from None
    return out


@dataclass(frozen=True, slots=True)
class IoStatLine:
    major: int
    minor: int
    #: rbytes, wbytes, rios, wios, dbytes, dios as read.
    known: Mapping[str, int]
    #: Every other key (cost.*, depth, avg_lat, win, ...), numeric value kept as a float.
    extra: Mapping[str, float] = field(default_factory=lambda: MappingProxyType({}))


IO_KEYS = frozenset({"rbytes", "wbytes", "rios", "wios", "dbytes", "dios"})


def _devnum(tok: bytes) -> tuple[int, int]:
    maj, sep, minor = tok.partition(b":")
    if not sep:
        raise ParseError("expected MAJ:MIN")
    return _int(maj, "major"), _int(minor, "minor")


def _int(tok: bytes, what: str) -> int:
    try:
        return int(tok)
    except ValueError:
        raise ParseError(f"{what}: not an integer") from None


def parse_io_stat(data: bytes) -> list[IoStatLine]:
    """io.stat (nested keyed). A device line without keys (seen on 6.18) is skipped."""
    out: list[IoStatLine] = []
    for line in data.split(b"\n"):
        toks = line.split()
        if len(toks) < 2:
            if toks:
                _devnum(toks[0])  # still must be a device number
            continue
        major, minor = _devnum(toks[0])
        known: dict[str, int] = {}
        extra: dict[str, float] = {}
        for tok in toks[1:]:
            k, sep, v = tok.partition(b"=")
            if not sep or not k:
                raise ParseError("io.stat: expected key=value")
            try:
                key = k.decode()
                if key in IO_KEYS:
                    known[key] = int(v)
                else:
                    extra[key] = float(v)
            except ValueError:
                raise ParseError("io.stat: bad value") from None
        out.append(IoStatLine(major, minor, known, MappingProxyType(extra)))
    return out


# -- cgroup v1 -----------------------------------------------------------------------------


def parse_v1_limit(data: bytes) -> int:
    """A v1 byte limit (memory.limit_in_bytes, ...): the page-rounded LONG_MAX is UNLIMITED."""
    tok = data.strip()
    if tok == b"max":
        return UNLIMITED
    value = _int(tok, "v1 limit")
    if value >= V1_UNLIMITED_THRESHOLD or value == -1:
        return UNLIMITED
    return value


def parse_v1_blkio(data: bytes) -> dict[tuple[int, int], dict[str, int]]:
    """blkio.throttle.io_service_bytes[_recursive] / io_serviced[_recursive].

    Lines `MAJ:MIN Op VALUE` (Op: Read, Write, Sync, Async, Discard, Total) and a last
    `Total VALUE` line (dropped: the per-device lines carry everything).
    """
    out: dict[tuple[int, int], dict[str, int]] = {}
    for line in data.split(b"\n"):
        toks = line.split()
        if not toks:
            continue
        if len(toks) == 2 and toks[0] == b"Total":
            _int(toks[1], "blkio total")
            continue
        if len(toks) != 3:
            raise ParseError("blkio: expected MAJ:MIN OP VALUE")
        dev = _devnum(toks[0])
        try:
            out.setdefault(dev, {})[toks[1].decode()] = int(toks[2])
        except ValueError:
            raise ParseError("blkio: bad value") from None
    return out


#: v1 memory.stat key -> v2 name. Keys not listed keep their name.
V1_MEMORY_STAT_NAMES: Mapping[str, str] = MappingProxyType(
    {
        "rss": "anon",
        "cache": "file",
        "mapped_file": "file_mapped",
        "dirty": "file_dirty",
        "writeback": "file_writeback",
        "rss_huge": "anon_thp",
    }
)


def translate_v1_memory_stat(v1: Mapping[str, int]) -> dict[str, int]:
    """v1 memory.stat keys -> v2 names; `total_<key>` (hierarchical, like every v2 value)
    wins over the cgroup-local `<key>`, whatever the order."""
    names = V1_MEMORY_STAT_NAMES
    out = {names.get(k, k): v for k, v in v1.items() if not k.startswith("total_")}
    out.update((names.get(k[6:], k[6:]), v) for k, v in v1.items() if k.startswith("total_"))
    return out


def parse_v1_memory_stat(data: bytes) -> dict[str, int]:
    """v1 memory.stat, translated to v2 key names (see translate_v1_memory_stat)."""
    # Fast path for the kernel's shape: local keys first, then only total_* keys. The local
    # value of a key that has a total_ is never converted (about half the file). Keys are the
    # shared names of _key_name: one str per key for every cgroup (and its hash computed once).
    idx = data.find(b"\ntotal_")
    if idx >= 0 and data[-1:] == b"\n":
        tail_b = data[idx + 1 :]
        lines = tail_b.count(b"\n")
        # Every tail line starts with total_, and total_ appears nowhere else in the tail.
        if tail_b.count(b"\ntotal_") + 1 == lines == tail_b.count(b"total_"):
            head = data[: idx + 1].split()
            tail = tail_b.replace(b"total_", b"").split()
            nh, nt = len(head), len(tail)
            if not (nh | nt) & 1 and data.count(b"\n") == (nh + nt) >> 1:
                try:
                    merged = dict(zip(map(_key_name, head[0::2]), head[1::2], strict=True))
                    merged.update(zip(map(_key_name, tail[0::2]), tail[1::2], strict=True))
                except ValueError:
                    raise ParseError("v1 memory.stat: not UTF-8") from None
                for old, new in V1_MEMORY_STAT_NAMES.items():
                    value = merged.pop(old, None)
                    if value is not None:
                        merged[new] = value
                try:
                    return dict(zip(merged, map(int, merged.values()), strict=True))
                except ValueError:
                    raise ParseError("v1 memory.stat: bad value") from None
    return translate_v1_memory_stat(parse_flat(data))


def parse_freezer_state(data: bytes) -> bool:
    """freezer.state: True only for FROZEN (FREEZING has not completed, like v2 `frozen 0`)."""
    tok = data.strip()
    if tok == b"FROZEN":
        return True
    if tok in (b"THAWED", b"FREEZING"):
        return False
    raise ParseError(f"freezer.state: {tok[:20]!r}")


def shares_to_weight(shares: int) -> int:
    """cpu.shares (2-262144) to cpu.weight (1-10000), the conversion runc and Kubernetes use."""
    shares = min(max(shares, 2), 262144)
    return 1 + ((shares - 2) * 9999) // 262142


def parse_procs_first(data: bytes) -> int | None:
    """The first pid of a cgroup.procs content, None when empty."""
    toks = data.split(None, 1)
    return _int(toks[0], "pid") if toks else None


def parse_proc_cgroup(data: bytes) -> dict[str, str]:
    """/proc/<pid>/cgroup: hierarchy key ("unified" or each v1 controller) -> path."""
    out: dict[str, str] = {}
    try:
        text = data.decode()
    except ValueError:
        raise ParseError("/proc/pid/cgroup: not UTF-8") from None
    for line in text.split("\n"):
        if not line:
            continue
        parts = line.split(":", 2)
        if len(parts) != 3 or not parts[2].startswith("/"):
            raise ParseError("/proc/pid/cgroup: expected ID:CONTROLLERS:PATH")
        hid, ctrls, path = parts
        if hid == "0" and not ctrls:
            out["unified"] = path
        else:
            for ctrl in ctrls.split(","):
                if ctrl:
                    out[ctrl] = path
    return out
