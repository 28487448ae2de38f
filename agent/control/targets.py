"""Resolve what the user named (container id/name or cgroup path) to cgroup directories.

Everything resolves strictly inside the cgroup root: `..` components, paths outside the root
and symlinks are refused. On hybrid and legacy hosts the v1 hierarchies can place the same
workload at a different path (e.g. memory under /process_api/<id>), so each hierarchy's
directory comes from /proc/<pid>/cgroup of a member process, not from the reference path.
"""

from __future__ import annotations

import contextlib
import os
import stat
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType

from agent.control.errors import ControlError
from agent.core.exit_codes import ExitCode
from agent.model.snapshot import Snapshot, WorkloadIdentity
from collectors.layout import CgroupLayout
from collectors.procfs import parse_cgroup


@dataclass(frozen=True, slots=True)
class Target:
    #: What the user gave.
    ref: str
    #: Path relative to the reference hierarchy root, "/" for the root itself.
    cgroup: str
    #: The reference hierarchy's directory (cgroup2 where mounted).
    ref_dir: Path
    #: cgroup2 directory, None on legacy hosts.
    unified: Path | None
    #: v1 controller -> directory of this workload in that hierarchy (where it has one).
    v1: Mapping[str, Path] = field(default_factory=lambda: MappingProxyType({}))
    identity: WorkloadIdentity | None = None

    @property
    def is_root(self) -> bool:
        return self.cgroup == "/"

    def dirs(self) -> list[Path]:
        """Every distinct directory of this workload (reference first)."""
        out = [self.ref_dir]
        if self.unified is not None and self.unified not in out:
            out.append(self.unified)
        out.extend(d for d in self.v1.values() if d not in out)
        return out


def normalize_rel(rel: str) -> str:
    """A cgroup path as "/a/b": refuses `..`, NUL and empty input."""
    if not rel or "\x00" in rel:
        raise ControlError(f"bad cgroup path {rel!r}", ExitCode.USAGE)
    parts = [p for p in rel.split("/") if p not in ("", ".")]
    if ".." in parts:
        raise ControlError(f"cgroup path {rel!r} contains '..': refused", ExitCode.USAGE)
    return "/" + "/".join(parts)


def safe_dir(root: Path, rel: str) -> Path:
    """`root`/`rel` after checking every component is a real directory, not a symlink."""
    rel = normalize_rel(rel)
    current = root
    for part in [p for p in rel.split("/") if p]:
        current = current / part
        try:
            st = os.lstat(current)
        except FileNotFoundError:
            raise ControlError(f"no such cgroup: {rel}", ExitCode.NOT_FOUND) from None
        except OSError as e:
            raise ControlError(f"cannot read {current}: {e.strerror}", ExitCode.FAILED) from None
        if stat.S_ISLNK(st.st_mode):
            raise ControlError(f"{current} is a symlink: refused", ExitCode.USAGE)
        if not stat.S_ISDIR(st.st_mode):
            raise ControlError(f"{rel} is not a cgroup directory", ExitCode.USAGE)
    real, real_root = os.path.realpath(current), os.path.realpath(root)
    if real != real_root and not real.startswith(real_root + os.sep):
        raise ControlError(f"{rel} resolves outside the cgroup root", ExitCode.USAGE)
    return current


def read_pids(d: Path) -> list[int]:
    with contextlib.suppress(OSError, ValueError):
        return [int(x) for x in (d / "cgroup.procs").read_text().split()]
    return []


def subtree_pids(d: Path) -> dict[int, str]:
    """pid -> sub-path (relative to `d`, "" for `d` itself) of every process in the subtree."""
    out: dict[int, str] = {}
    for sub, _dirs, files in os.walk(d):
        if "cgroup.procs" not in files:
            continue
        rel = os.path.relpath(sub, d)
        for pid in read_pids(Path(sub)):
            out[pid] = "" if rel == "." else "/" + rel
    return out


def proc_cgroups(pid: int) -> dict[str, str]:
    """Hierarchy key ("unified" or a v1 controller) -> cgroup path of `pid`; {} if gone."""
    try:
        text = Path(f"/proc/{pid}/cgroup").read_text()
    except OSError:
        return {}
    return parse_cgroup(text)


def _strip_suffix(path: str, suffix: str) -> str | None:
    if not suffix:
        return path
    if path.endswith(suffix):
        return path[: -len(suffix)] or "/"
    return None


def v1_dirs(layout: CgroupLayout, ref_dir: Path, rel: str) -> dict[str, Path]:
    """Each v1 hierarchy's directory for the workload whose reference directory is `ref_dir`.

    Taken from a member process's /proc/<pid>/cgroup (a process in a sub-cgroup has its
    sub-path stripped); an empty cgroup falls back to the same path in each hierarchy.
    Left out: hierarchies where the workload sits at the root, and v1 cgroups holding
    processes that are not the workload's (not a cgroup of its own).
    """
    members = subtree_pids(ref_dir)
    ordered = sorted(members.items(), key=lambda kv: (len(kv[1]), kv[0]))
    out: dict[str, Path] = {}
    for ctrl, root in layout.v1.items():
        path: str | None = None
        for pid, sub in ordered[:16]:
            own = proc_cgroups(pid).get(ctrl)
            if own is not None:
                path = _strip_suffix(own, sub)
                if path is not None:
                    break
        if path is None and not members:
            path = rel
        if path is None or path == "/":
            continue
        with contextlib.suppress(ControlError):
            d = safe_dir(root, path)
            # Only a cgroup of the workload's own: one shared with other processes (a service
            # cgroup the container was never moved out of) must never be frozen or killed.
            if set(subtree_pids(d)) <= set(members):
                out[ctrl] = d
    return out


def resolve_target(ref: str, layout: CgroupLayout, snapshot: Snapshot | None) -> Target:
    """A container id/name (from the latest snapshot) or a cgroup path, as a Target."""
    ref = ref.strip()
    if not ref:
        raise ControlError("empty target", ExitCode.USAGE)
    root = layout.reference_root
    identity: WorkloadIdentity | None = None
    if ref.startswith("/"):
        rel = ref
        root_str = str(root).rstrip("/") + "/"
        if ref.startswith(root_str) or ref == str(root):
            rel = ref[len(str(root)) :] or "/"
        elif ref.startswith("/sys/fs/cgroup"):
            raise ControlError(
                f"{ref} is outside the cgroup root {root}; give a path inside it",
                ExitCode.USAGE,
            )
        rel = normalize_rel(rel)
        if snapshot is not None:
            found = snapshot.find(rel)
            identity = found.identity if found is not None else None
    else:
        if "/" in ref or ref in (".", ".."):
            raise ControlError(
                f"bad target {ref!r}: give a container id or name, or a cgroup path starting "
                "with /",
                ExitCode.USAGE,
            )
        if snapshot is None:
            raise ControlError(
                f"no container {ref!r}: the agent has no snapshot yet", ExitCode.NOT_FOUND
            )
        named = snapshot.named(ref)
        if len(named) > 1 and ref not in snapshot.workloads:
            candidates = sorted(f"{w.identity.id[:12]} ({w.identity.runtime or '-'}, "
                                f"{w.identity.cgroup})" for w in named)
            raise ControlError(
                f"ambiguous name {ref!r}: {len(named)} workloads carry it: "
                + "; ".join(candidates) + ". Give an id or a cgroup path",
                ExitCode.USAGE, {"candidates": candidates})
        found = snapshot.find(ref)
        if found is None:
            raise ControlError(f"no container {ref!r}", ExitCode.NOT_FOUND)
        identity = found.identity
        rel = normalize_rel(identity.cgroup)
    ref_dir = safe_dir(root, rel)
    unified = ref_dir if layout.unified is not None else None
    return Target(
        ref=ref,
        cgroup=rel,
        ref_dir=ref_dir,
        unified=unified,
        v1=MappingProxyType(v1_dirs(layout, ref_dir, rel)),
        identity=identity,
    )


def target_from_dirs(
    ref: str, layout: CgroupLayout, rel: str, v1: Mapping[str, str]
) -> Target:
    """A Target from recorded per-hierarchy paths (a checkpoint's metadata); all checked."""
    rel = normalize_rel(rel)
    ref_dir = safe_dir(layout.reference_root, rel)
    dirs: dict[str, Path] = {}
    for ctrl, path in v1.items():
        root = layout.v1_root(ctrl)
        if root is not None and normalize_rel(path) != "/":
            dirs[ctrl] = safe_dir(root, path)
    return Target(
        ref=ref,
        cgroup=rel,
        ref_dir=ref_dir,
        unified=ref_dir if layout.unified is not None else None,
        v1=MappingProxyType(dirs),
    )


def v1_rel(layout: CgroupLayout, ctrl: str, d: Path) -> str:
    root = layout.v1_root(ctrl)
    assert root is not None
    return "/" + str(d.relative_to(root)).lstrip(".")


def write_knob(d: Path, name: str, value: str, missing: str) -> None:
    """Write a cgroup control file; a one-line ControlError when absent or refused."""
    try:
        (d / name).write_text(value)
    except FileNotFoundError:
        raise ControlError(f"{d} has no {name} ({missing})") from None
    except OSError as e:
        raise ControlError(f"cannot write {d}/{name}: {e.strerror}") from None
