"""Which cgroups a freeze, kill or checkpoint must not touch unless forced.

Refused: the root cgroup; any cgroup that holds the agent (its own cgroup and its ancestors,
in every hierarchy the operation writes); any cgroup holding PID 1; `init.scope`; and any
cgroup that is, or contains, a unit named in the protected list (journald, dbus, sshd and the
container runtimes' daemons by default). Thaw is never refused.
"""

from __future__ import annotations

import fnmatch
import os
from collections.abc import Iterable, Sequence
from pathlib import Path

from agent.control.errors import ControlError
from agent.control.targets import Target, subtree_pids
from agent.core.exit_codes import ExitCode

#: Unit-name patterns (fnmatch) protected by default. Containers' own scopes
#: (docker-<id>.scope, libpod-<id>.scope, cri-containerd-<id>.scope) stay freezable.
DEFAULT_PROTECTED: tuple[str, ...] = (
    "init.scope",
    "systemd-journald*.service",
    "dbus.service",
    "dbus-broker.service",
    "ssh.service",
    "sshd.service",
    "sshd@*.service",
    "containerd.service",
    "docker.service",
    "crio.service",
    "cri-o.service",
    "podman.service",
    "cri-docker.service",
    "kubelet.service",
    "container-agent.service",
)

#: Subtrees deeper than this are not searched for protected units (a container has few).
_MAX_WALK_DIRS = 20000


def _protected_below(d: Path, patterns: Sequence[str]) -> str | None:
    """The first cgroup at or below `d` whose name matches a pattern, as a path under `d`."""
    if any(fnmatch.fnmatchcase(d.name, p) for p in patterns):
        return "."
    seen = 0
    for sub, dirs, _files in os.walk(d):
        for name in dirs:
            if any(fnmatch.fnmatchcase(name, p) for p in patterns):
                return os.path.relpath(os.path.join(sub, name), d)
        seen += len(dirs)
        if seen > _MAX_WALK_DIRS:
            return None
    return None


def check_allowed(
    target: Target,
    dirs: Iterable[Path],
    protected: Sequence[str] = DEFAULT_PROTECTED,
    *,
    agent_pid: int | None = None,
    verb: str = "freeze",
) -> None:
    """Raise ControlError(REFUSED) when `verb` on `target` would hit something protected.

    `dirs` are the directories the operation writes (the chosen freezer's, or all for kill).
    """
    agent_pid = os.getpid() if agent_pid is None else agent_pid
    hint = " (use --force to override)"
    if target.is_root:
        raise ControlError(f"refusing to {verb} the root cgroup{hint}", ExitCode.REFUSED)
    for d in dirs:
        pids = subtree_pids(d)
        if agent_pid in pids:
            raise ControlError(
                f"refusing to {verb} {target.cgroup}: it contains the agent itself "
                f"(pid {agent_pid} in {d}){hint}",
                ExitCode.REFUSED,
            )
        if 1 in pids:
            raise ControlError(
                f"refusing to {verb} {target.cgroup}: it contains PID 1 (init){hint}",
                ExitCode.REFUSED,
            )
        found = _protected_below(d, protected)
        if found is not None:
            what = d.name if found == "." else found
            raise ControlError(
                f"refusing to {verb} {target.cgroup}: {what} is protected{hint}",
                ExitCode.REFUSED,
            )


def check_patterns(value: object) -> str | None:
    """Config validator for [control] protected: a list of non-empty strings."""
    if not isinstance(value, list) or not all(isinstance(x, str) and x for x in value):
        return "must be a list of unit-name patterns"
    return None
