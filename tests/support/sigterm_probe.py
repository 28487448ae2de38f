"""Run by tests/test_test_cleanup.py as `pytest tests/support/sigterm_probe.py` (not collected
otherwise): a test that makes a cgroup, says where, and sleeps until the run is terminated."""

from __future__ import annotations

import time

from tests.support.cgroups import CgroupFactory


def test_sleeps_in_a_test_cgroup(cgroups: CgroupFactory) -> None:
    cg = cgroups.create()
    print(f"PREFIX {cg.dirs[cgroups.ref_key].parent}", flush=True)
    time.sleep(60)
