"""One cgroup directory fd and its files read relative to it, plus the small value helpers
every cgroup reader shares.

Files are opened relative to an open directory fd (openat): one path component to resolve per
file instead of the whole /sys/fs/cgroup/... path, and the directory is resolved once. The
error rules (cgroup-v2-semantics.md §1.0, §1.9):

- ENOENT on a file while the directory exists: the file is absent on this kernel or
  controller, the field is None. Because openat in a removed kernfs directory also answers
  ENOENT, the caller re-checks the directory when any file was missing (`CgroupDir.missing`).
- ENODEV (on open or read): the cgroup was removed while we read it -> Vanished.
- EOPNOTSUPP on a PSI file: PSI is disabled -> PressureSample(supported=False).
- EACCES and other errors, or content that does not parse: the field is None.
"""

from __future__ import annotations

import errno
import os
from collections.abc import Callable, Mapping, Sequence
from types import MappingProxyType
from typing import TYPE_CHECKING, TypeVar

from collectors.parsers import ParseError, parse_flat
from collectors.samples import EMPTY, UNLIMITED

if TYPE_CHECKING:  # OpenDirs hands out kept CgroupDirs
    from collectors.open_dirs import OpenDirs

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

T = TypeVar("T")
B = TypeVar("B", bytes | None, tuple[bytes | None, ...])


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
        "memos",
        "missing",
        "owned",
        "path",
        "pool",
        "prefetched",
        "record",
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
        #: The last bytes of a file and what they parsed to (kept directories only).
        self.memos: dict[str, tuple[object, object]] | None = None
        self.pool: OpenDirs | None = None
        #: Names read in this read (kept directories: OpenDirs starts the list), in order.
        self.record: list[str] | None = None
        #: Bytes already read for this read (IdleReads' compare), taken instead of a pread.
        self.prefetched: dict[str, bytes | None] | None = None
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
        if self.record is not None:
            self.record.extend(names)
        pre = self.prefetched
        for name in names:
            if pre is not None and name in pre:
                out.append(pre.pop(name))
                continue
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

    def memo(self, key: str, data: B, parse: Callable[[B], T]) -> T:
        """parse(data), or the previous result when `data` equals the bytes it came from: an
        idle cgroup's memory.stat and PSI files read the same from cycle to cycle, and an
        equality test is far cheaper than a parse. `data` is bytes, None, or a tuple of them;
        parse results are immutable, so samples may share them. Exact: equal input, same
        output."""
        memos = self.memos
        if memos is None:
            return parse(data)
        last = memos.get(key)
        if last is not None and last[0] == data:
            if last[0] is not data:  # keep the newer bytes: an idle compare holds those
                memos[key] = (data, last[1])
            return last[1]  # type: ignore[return-value]
        value = parse(data)
        memos[key] = (data, value)
        return value

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


def frozen_flat(data: bytes | None) -> Mapping[str, int] | None:
    """flat(data) as a read-only mapping (it may be shared through CgroupDir.memo)."""
    d = flat(data)
    return None if d is None else frozen_map(d)
