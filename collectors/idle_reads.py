"""Re-reading an idle cgroup: the files of its last quiet read, compared byte for byte.

A read's sample is a function of the bytes it read and of the previous sample (whose values
stand for the files a partial read leaves unread). So when every file the last quiet read
read (a partial read in which the CPU counter did not move) reads the same bytes again, with
no directory written to since and the same member pid, the reader would build the same sample
once more: the previous one is returned with the new time. Exact by construction, and it
leaves out the parsing, the per-controller logic and the sample's construction, which cost an
idle cgroup as much as the reads themselves.

The files compared are those the quiet read recorded; a later read reads no file outside
them unless one of them changed (the CPU counter, pids.current, cgroup.events decide what
else is read). When something did change, the bytes just read are left on their directories
(`CgroupDir.prefetched`) for the full read that follows, so a busy cgroup pays no second
read of any file.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TypeVar

from collectors.cgroup_dir import _BUF, _MAYBE_MORE, CgroupDir
from collectors.open_dirs import OpenDirs
from collectors.quiet_parents import HIER_FILES
from collectors.written_dirs import WrittenDirs

T = TypeVar("T", bound=tuple[object, ...])


@dataclass(slots=True)
class IdlePlan:
    #: (directory, files read in it) for each directory the quiet read used, in its order.
    dirs: tuple[tuple[str, tuple[str, ...]], ...]
    member_pid: int | None
    #: (index in dirs, file name) of each file in the order read and compared: the
    #: hierarchical files of the first (reference) directory first, `n_hier` of them.
    slots: tuple[tuple[int, str], ...] = ()
    n_hier: int = 0
    #: The files' kept fds, in slot order, valid while OpenDirs.generation is `generation`
    #: (no kept directory was closed since, so no fd number was given to another file).
    fds: tuple[int, ...] = ()
    generation: int = -1
    #: The files' bytes at their last read, in slot order (None before the first re-read).
    datas: list[bytes | None] | None = None
    #: A file may not fit one read: this cgroup is always read in full.
    long: bool = False


def quiet_plan(
    used: Sequence[CgroupDir], member_pid: int | None, last: IdlePlan | None,
    written: WrittenDirs,
) -> IdlePlan | None:
    """The plan of a quiet read that used `used` (`last` itself when it read the same files);
    None when a directory or file was not kept, or a directory with limits is not watched for
    writes. Its bytes are the caller's to set (IdlePath.carry)."""
    dirs: list[tuple[str, tuple[str, ...]]] = []
    for d in used:
        files = d.files
        if d.record is None or files is None or any(n not in files for n in d.record):
            return None  # a directory or file not kept: its re-read would open it again
        if written.limits_stale(d.path):
            return None  # its limits are read every time (not watched)
        dirs.append((d.path, _shared(tuple(d.record))))
    if last is not None and last.dirs == tuple(dirs) and last.member_pid == member_pid:
        return last
    hier: list[tuple[int, str]] = []
    rest: list[tuple[int, str]] = []
    for i, (_path, names) in enumerate(dirs):
        for name in names:
            (hier if i == 0 and name in HIER_FILES and "cpu.stat" in names else rest).append(
                (i, name))
    return IdlePlan(tuple(dirs), member_pid, _shared(tuple(hier + rest)), len(hier))


_SHARED: dict[tuple[object, ...], tuple[object, ...]] = {}


def _shared(value: T) -> T:
    """One object for equal tuples (every cgroup of a layout reads the same file names)."""
    if len(_SHARED) > 4096:  # bounded: a few shapes per layout are expected
        _SHARED.clear()
    return _SHARED.setdefault(value, value)  # type: ignore[return-value]


def reread(
    plan: IdlePlan, open_dirs: OpenDirs, written: WrittenDirs, member_pid: int | None,
    now_ns: int, whole: bool = False, skip_hier: bool = False,
) -> tuple[bool, list[CgroupDir]]:
    """(every file read the bytes of last time, directories given prefetched bytes).

    False when a directory is no longer kept or was written to, a file is missing, or the
    cgroup vanished: the caller reads in full (and clears `prefetched` on those returned).
    `whole`: a whole read follows anyway; the bytes are handed to it even when the same.
    `skip_hier`: the hierarchical files are known unchanged (QuietParents): not read."""
    if plan.long or (member_pid is not None and member_pid != plan.member_pid):
        return False, []
    # Something was closed or written since: check each directory, take its fds again.
    moved_on = plan.generation != open_dirs.generation or written.any_written()
    if moved_on and not _refresh(plan, open_dirs, written, now_ns):
        return False, []
    _pread = os.pread
    datas = plan.datas
    skip = plan.n_hier if skip_hier and datas is not None and not whole else 0
    try:
        got: list[bytes | None] = [_pread(fd, _BUF, 0) for fd in plan.fds[skip:]]
    except OSError:  # gone (ENODEV) or unreadable: the full read tells which
        return False, []
    if skip:
        assert datas is not None
        same = got == datas[skip:]
        if same:
            return True, []
        got = datas[:skip] + got  # stale here: not handed on, and not compared to again
        plan.datas = None
    else:
        same = got == datas
        if same and not whole:
            return True, []
        plan.datas = got
    if any(data is not None and len(data) >= _MAYBE_MORE for data in got):
        # Maybe longer than one read (the full read reads on): not compared, ever.
        plan.long = True
        plan.datas = None
        return False, []
    handed: dict[int, dict[str, bytes | None]] = {}
    for k in range(skip, len(got)):
        i, name = plan.slots[k]
        handed.setdefault(i, {})[name] = got[k]
    stashed: list[CgroupDir] = []
    for i, chunk in handed.items():
        d = open_dirs.kept(plan.dirs[i][0], now_ns)
        if d is None:
            continue
        d.prefetched = chunk
        stashed.append(d)
    return same, stashed


def _refresh(plan: IdlePlan, open_dirs: OpenDirs, written: WrittenDirs, now_ns: int) -> bool:
    found: list[dict[str, int]] = []
    for path, names in plan.dirs:
        if written.limits_stale(path):
            return False
        d = open_dirs.kept(path, now_ns) if names else None
        files = d.files if d is not None else None
        if names and files is None:
            return False
        found.append(files or {})
    fds: list[int] = []
    for i, name in plan.slots:
        fd = found[i].get(name)
        if fd is None:
            return False
        fds.append(fd)
    plan.fds = tuple(fds)
    plan.generation = open_dirs.generation
    return True


def consumed(stashed: Sequence[CgroupDir]) -> bool:
    """The read that followed took every prefetched byte (its sample is of those bytes)."""
    return bool(stashed) and all(d.prefetched == {} for d in stashed)
