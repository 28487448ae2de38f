"""Block device numbers (MAJ:MIN) to kernel names, from /sys/dev/block/MAJ:MIN/uevent.

Names are cached: io.stat lists the same few devices for every cgroup. A number that has no
entry (yet) is remembered as unknown for a while and then looked up again, because disks are
hot-plugged.
"""

from __future__ import annotations

import time
from pathlib import Path

from collectors.cgroup_dir import read_file

#: Seconds before an unknown device number is looked up again.
UNKNOWN_RETRY_S = 60.0


def parse_uevent_devname(data: bytes) -> str | None:
    """The DEVNAME= value of a uevent file, None when absent or not UTF-8."""
    for line in data.split(b"\n"):
        if line.startswith(b"DEVNAME="):
            try:
                name = line[8:].strip().decode()
            except ValueError:
                return None
            return name or None
    return None


class BlockDevices:
    def __init__(self, root: Path = Path("/sys/dev/block")) -> None:
        self._root = str(root)
        self._names: dict[tuple[int, int], str] = {}
        self._unknown: dict[tuple[int, int], float] = {}

    def name(self, major: int, minor: int) -> str:
        """The kernel name ("vda", "nvme0n1"), else "MAJ:MIN"."""
        key = (major, minor)
        name = self._names.get(key)
        if name is not None:
            return name
        fallback = f"{major}:{minor}"
        failed_at = self._unknown.get(key)
        now = time.monotonic()
        if failed_at is not None and now - failed_at < UNKNOWN_RETRY_S:
            return fallback
        found = self._lookup(major, minor)
        if found is None:
            self._unknown[key] = now
            return fallback
        self._unknown.pop(key, None)
        self._names[key] = found
        return found

    def _lookup(self, major: int, minor: int) -> str | None:
        data = read_file(f"{self._root}/{major}:{minor}/uevent")
        return None if data is None else parse_uevent_devname(data)
