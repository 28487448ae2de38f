"""Which cgroups the v1 counter poll covers: only those under a limit can hit it."""

from __future__ import annotations

from agent.model.snapshot import Snapshot
from collectors.samples import UNLIMITED


def limited_subtrees(snapshot: Snapshot) -> tuple[frozenset[str], frozenset[str]]:
    """Cgroup paths that have, or descend from, a finite pids limit; and a finite memory limit."""
    pids_limited: set[str] = set()
    mem_limited: set[str] = set()
    for w in snapshot.workloads.values():
        s = w.sample
        if s.pids is not None and s.pids.max not in (None, UNLIMITED):
            pids_limited.add(w.identity.cgroup)
        if s.memory is not None and s.memory.max not in (None, UNLIMITED):
            mem_limited.add(w.identity.cgroup)

    if not pids_limited and not mem_limited:
        return frozenset(), frozenset()

    def under(path: str, limited: set[str]) -> bool:
        while path:
            if path in limited:
                return True
            path = path.rsplit("/", 1)[0]
        return False

    paths = [w.identity.cgroup for w in snapshot.workloads.values()]
    return (frozenset(p for p in paths if under(p, pids_limited)),
            frozenset(p for p in paths if under(p, mem_limited)))
