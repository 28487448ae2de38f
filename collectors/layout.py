"""Which cgroup layout this host runs, read from /proc/self/mountinfo.

- unified: cgroup2 is the only cgroup filesystem (normally at /sys/fs/cgroup);
- hybrid: cgroup2 (normally /sys/fs/cgroup/unified) beside v1 controller hierarchies;
- legacy: v1 hierarchies only.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from types import MappingProxyType

#: v1 controllers the agent reads. `name=systemd` is a named hierarchy, not a controller.
V1_CONTROLLERS = ("cpu", "cpuacct", "cpuset", "memory", "devices", "freezer", "blkio", "pids")


class LayoutKind(StrEnum):
    UNIFIED = "unified"
    HYBRID = "hybrid"
    LEGACY = "legacy"


@dataclass(frozen=True, slots=True)
class CgroupLayout:
    kind: LayoutKind
    #: Mount point of the cgroup2 filesystem, None on legacy hosts.
    unified: Path | None
    #: v1 controller name -> mount point of its hierarchy (co-mounted controllers share one).
    v1: Mapping[str, Path] = field(default_factory=lambda: MappingProxyType({}))

    @property
    def reference_root(self) -> Path:
        """The tree discovery walks: cgroup2 where mounted, else a v1 hierarchy.

        On legacy hosts the reference is the cpuacct hierarchy, else memory, else any.
        """
        if self.unified is not None:
            return self.unified
        for ctrl in ("cpuacct", "cpu", "memory", "pids"):
            if ctrl in self.v1:
                return self.v1[ctrl]
        if self.v1:
            return next(iter(self.v1.values()))
        raise LayoutError("no cgroup filesystem is mounted")

    def v1_root(self, controller: str) -> Path | None:
        return self.v1.get(controller)


class LayoutError(Exception):
    """No usable cgroup mount was found."""


def _unescape(field_: str) -> str:
    # mountinfo escapes space, tab, newline and backslash as octal \040 etc.
    out: list[str] = []
    i = 0
    while i < len(field_):
        c = field_[i]
        if c == "\\" and i + 4 <= len(field_) and field_[i + 1 : i + 4].isdigit():
            out.append(chr(int(field_[i + 1 : i + 4], 8)))
            i += 4
        else:
            out.append(c)
            i += 1
    return "".join(out)


def parse_mountinfo(text: str) -> CgroupLayout:
    """Parse mountinfo text into a layout. Raises LayoutError when no cgroup fs is mounted."""
    unified: Path | None = None
    v1: dict[str, Path] = {}
    for line in text.splitlines():
        parts = line.split(" - ", 1)
        if len(parts) != 2:
            continue
        left, right = parts[0].split(), parts[1].split()
        if len(left) < 5 or len(right) < 3:
            continue
        mount_point = Path(_unescape(left[4]))
        fstype, super_opts = right[0], right[2]
        if fstype == "cgroup2":
            # The first cgroup2 mount wins; later ones are bind mounts into containers.
            if unified is None:
                unified = mount_point
        elif fstype == "cgroup":
            for opt in super_opts.split(","):
                if opt in V1_CONTROLLERS and opt not in v1:
                    v1[opt] = mount_point
    if unified is None and not v1:
        raise LayoutError("no cgroup or cgroup2 filesystem in mountinfo")
    if unified is not None and not v1:
        kind = LayoutKind.UNIFIED
    elif unified is not None:
        kind = LayoutKind.HYBRID
    else:
        kind = LayoutKind.LEGACY
    return CgroupLayout(kind=kind, unified=unified, v1=MappingProxyType(v1))


def detect_layout(mountinfo: Path = Path("/proc/self/mountinfo")) -> CgroupLayout:
    return parse_mountinfo(mountinfo.read_text(errors="replace"))
