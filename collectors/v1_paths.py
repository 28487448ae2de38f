"""Where a cgroup sits in each cgroup v1 hierarchy (hybrid and legacy hosts).

A cgroup's v1 path can differ between hierarchies (here memory sits under /process_api/<id>).
Each controller's path comes from /proc/<pid>/cgroup of a member (member_pid, else the first
pid of the cgroup's cgroup.procs), else the same relative path when that directory exists,
else the same path re-rooted under the agent's own cgroup of that hierarchy (hierarchies
mirror each other below the point where they diverge). Resolutions are cached per path and
redone when the directory inode changes (a new incarnation), when a different member pid is
given, and after RESOLVE_TTL_S.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from types import MappingProxyType

from collectors.cgroup_dir import CgroupDir, parsed, read_file
from collectors.layout import CgroupLayout
from collectors.parsers import parse_proc_cgroup, parse_procs_first

#: Seconds a v1 path resolution is trusted before it is redone.
RESOLVE_TTL_S = 60.0
#: Above this many cached resolutions the cache is emptied (paths no longer read linger).
_CACHE_MAX = 100_000
_RESOLVE_TTL_NS = int(RESOLVE_TTL_S * 1e9)
_NO_PATHS: Mapping[str, str] = MappingProxyType({})


@dataclass(slots=True)
class _Resolved:
    inode: int
    pid: int | None
    at_ns: int
    paths: Mapping[str, str]


class V1Paths:
    """Cached v1 controller -> path resolutions; `drop_dir(abs_path)` is called for each v1
    directory of a resolution that is replaced or forgotten (its kept fds go)."""

    def __init__(
        self, layout: CgroupLayout, proc_root: str, drop_dir: Callable[[str], None]
    ) -> None:
        self._v1_roots = {ctrl: str(p) for ctrl, p in layout.v1.items()}
        self.ref_key = "unified" if layout.unified is not None else _legacy_ref_key(layout)
        self._proc = proc_root
        self._drop_dir = drop_dir
        self._anchor = self._proc_cgroups("self") or {}
        self._cache: dict[str, _Resolved] = {}

    def absolute(self, ctrl: str, rel: str) -> str:
        return self._v1_roots[ctrl] + ("" if rel == "/" else rel)

    def invalidate(self, path: str) -> None:
        """Resolve again on the next read (moved or removed in some hierarchy)."""
        self._cache.pop(path, None)

    def forget(self, path: str) -> None:
        """The cgroup is gone: drop its resolution and its v1 directories."""
        e = self._cache.pop(path, None)
        if e is not None:
            for ctrl, rel in e.paths.items():
                self._drop_dir(self.absolute(ctrl, rel))

    def candidate_dirs(self, path: str) -> list[str]:
        """Every v1 directory the cgroup may have (for closing what a half-done read kept)."""
        return [
            self.absolute(ctrl, cand)
            for ctrl in self._v1_roots
            for cand in self.candidates(path, ctrl)
        ]

    def resolved(
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
        paths, pid = self._resolve(path, member_pid, ref)
        if e is not None:
            if e.inode == ref.ino and paths == e.paths:
                # Resolved to the same directories (after the TTL, say): they stay open, and
                # the same object tells the reader nothing moved (no whole read, no reopen).
                paths = e.paths
            else:  # a new incarnation or a new member elsewhere: its old directories go
                for ctrl, rel in e.paths.items():
                    self._drop_dir(self.absolute(ctrl, rel))
        if len(self._cache) >= _CACHE_MAX:
            self._cache.clear()
        self._cache[path] = _Resolved(ref.ino, pid, now_ns, paths)
        return paths

    def _resolve(
        self, path: str, member_pid: int | None, ref: CgroupDir
    ) -> tuple[Mapping[str, str], int | None]:
        out: dict[str, str] = {}
        if self.ref_key != "unified":
            out[self.ref_key] = path
        pid = member_pid
        if pid is None:
            pid = parsed(parse_procs_first, ref.read("cgroup.procs", keep=False))  # seldom
        used_pid = None
        if pid is not None:
            member = self._proc_cgroups(pid)
            if member is not None and self._from_member(path, member, out):
                used_pid = pid
        for ctrl, root in self._v1_roots.items():
            if ctrl in out:
                continue
            for cand in self.candidates(path, ctrl):
                if os.path.isdir(root + ("" if cand == "/" else cand)):
                    out[ctrl] = cand
                    break
        return (MappingProxyType(out) if out else _NO_PATHS), used_pid

    def _from_member(self, path: str, member: dict[str, str], out: dict[str, str]) -> bool:
        """Fill `out` from a member's /proc/<pid>/cgroup; False when the pid is elsewhere."""
        at = member.get(self.ref_key)
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

    def candidates(self, path: str, ctrl: str) -> list[str]:
        cands = [path]
        own_ref = self._anchor.get(self.ref_key)
        own = self._anchor.get(ctrl)
        if own_ref is not None and own is not None and own != own_ref:
            base = own_ref.rstrip("/")
            if path == own_ref or path.startswith(base + "/") or base == "":
                rest = path[len(base) :]
                cands.append((own.rstrip("/") + rest) or "/")
        return cands

    def _proc_cgroups(self, pid: int | str) -> dict[str, str] | None:
        return parsed(parse_proc_cgroup, read_file(f"{self._proc}/{pid}/cgroup"))


def _legacy_ref_key(layout: CgroupLayout) -> str:
    # Mirrors CgroupLayout.reference_root's choice on legacy hosts.
    for ctrl in ("cpuacct", "cpu", "memory", "pids"):
        if ctrl in layout.v1:
            return ctrl
    return next(iter(layout.v1))
