"""The cgroup files a CgroupReader reads, recorded by name (tests and benchmarks)."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager

from collectors import cgroup_dir


@contextmanager
def files_read() -> Iterator[list[str]]:
    """The names of the files read (successfully or not) while inside."""
    seen: list[str] = []
    orig = cgroup_dir.CgroupDir.read_many

    def recording(
        self: cgroup_dir.CgroupDir, names: Sequence[str], keep: bool = True
    ) -> list[bytes | None]:
        seen.extend(names)
        return orig(self, names, keep)

    cgroup_dir.CgroupDir.read_many = recording  # type: ignore[method-assign]
    try:
        yield seen
    finally:
        cgroup_dir.CgroupDir.read_many = orig  # type: ignore[method-assign]
