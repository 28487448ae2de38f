"""Cgroups made and removed that the snapshot has not taken in yet, merged in arrival order.

The kernel watch reports the tree's changes in batches, often faster than they are applied
while a cycle or a churn keeps the loop busy. A task per batch piled up (thousands, each with
its lists, under a slow loop); merged, what waits is bounded by the paths themselves and one
application takes them all.
"""

from __future__ import annotations

from collections.abc import Iterable

from agent.kernel.path_index import PathIndex


class PendingTreeChanges:
    def __init__(self) -> None:
        # Iterated in arrival order (a dict); a removal finds its subtree by bisection.
        self._created: PathIndex[None] = PathIndex()
        self._deleted: dict[str, None] = {}

    def add(self, created: Iterable[str], deleted: Iterable[str]) -> None:
        """One batch: its removals come before its creations (a path removed and made again
        is a new cgroup, so the old one is removed and the new one added); a path made and
        removed before it was applied, itself or with a directory above it, is only removed
        (a removal takes the subtree: Collector.remove_paths)."""
        for path in deleted:
            for made in self._created.subtree(path):
                del self._created[made]
            self._deleted[path] = None
        for path in created:
            self._created[path] = None

    def take(self) -> tuple[list[str], list[str]]:
        """(created, deleted) since the last take, to apply removals first."""
        created, deleted = list(self._created), list(self._deleted)
        self._created.clear()
        self._deleted.clear()
        return created, deleted

    def __bool__(self) -> bool:
        return bool(self._created or self._deleted)

    def __len__(self) -> int:
        return len(self._created) + len(self._deleted)
