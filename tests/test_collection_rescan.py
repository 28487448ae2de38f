"""agent.kernel.collection over real cgroups: what a full rescan does to known workloads."""

from __future__ import annotations

import sys

from agent.identity.discovery import Discovery
from agent.kernel.collection import Collector
from agent.model.snapshot import WorkloadIdentity
from collectors.cgroupfs import CgroupReader
from tests.support.cgroups import CgroupFactory
from tests.support.tracked import track


def _identity(col: Collector, path: str) -> WorkloadIdentity:
    return next(w for w in col.identities() if w.cgroup == path)


def test_a_rescan_keeps_an_unchanged_identity_object_and_replaces_a_changed_one(
    cgroups: CgroupFactory,
) -> None:
    # Consumers (the ledger's idle path, renderers' memos) compare identities with `is`: a
    # rescan that finds the same workload must hand them the same object.
    cg = cgroups.create()
    cg.spawn([sys.executable, "-S", "-c", "import time; time.sleep(60)"])
    col = Collector(Discovery(cgroups.layout), track(CgroupReader(cgroups.layout)))
    assert cg.rel in col.full_scan()
    before = _identity(col, cg.rel)
    col.full_scan()
    assert _identity(col, cg.rel) is before
    cg.remove()  # the same path again, a new incarnation: a new identity
    again = cgroups.create(cg.rel.rsplit("/", 1)[1])
    col.full_scan()
    now = _identity(col, again.rel)
    assert now is not before and now != before
    assert now.inode == again.ref_dir.stat().st_ino
