"""Exact final CPU for a cgroup removed the moment it empties, on Debian's kernel (the v2 guest
only): the rmdir eBPF program loads under the hardened unit, with the pre-6.16 rstat layout."""

from __future__ import annotations

import os
import subprocess
import uuid
from pathlib import Path

from tests.support.churn_checks import usage_usec
from tests.support.v2guest import (
    CGROUP_ROOT,
    ensure_agent_running,
    events,
    get,
    require_guest,
    wait_for,
    workload,
)

BURN = "i=0; while [ $i -lt 40000 ]; do i=$((i+1)); done"


def test_a_cgroup_removed_at_once_ends_with_its_exact_cpu() -> None:
    require_guest()
    ensure_agent_running()
    assert get("/api/v1/host")["facts"]["final_cpu_at_rmdir"] == "ebpf"
    # Outside systemd's slices, so that only this test removes what it made: a parent that
    # runs nothing itself (its counter is its one child's), and the child, removed at once.
    tag = uuid.uuid4().hex[:8]
    parents: list[Path] = []
    try:
        lives: list[tuple[str, Path]] = []
        for i in range(3):
            parent = CGROUP_ROOT / f"ca-v2-rmdir-{tag}-{i}"
            parent.mkdir()
            parents.append(parent)
            child = parent / "life"
            child.mkdir()
            # The agent follows a new cgroup within ms; on this slow guest, give it a moment.
            workload("/" + str(child.relative_to(CGROUP_ROOT)))
            procs = str(child / "cgroup.procs")

            def enter(p: str = procs) -> None:
                with open(p, "w") as f:
                    f.write("0")
            subprocess.run(["/bin/sh", "-c", BURN], preexec_fn=enter, check=True, timeout=120)
            child.rmdir()  # at once: no read of the child in between
            lives.append(("/" + str(child.relative_to(CGROUP_ROOT)), parent))
        for cgroup, parent in lives:
            stopped = wait_for(lambda c=cgroup: events("container_stopped", c), 60,
                               f"{cgroup} stopped")
            fields = stopped[-1]["fields"]
            assert fields["final"] is True, fields
            assert fields["cpu_usage_usec"] == usage_usec(parent) > 0, fields
    finally:
        for parent in parents:
            for d in (parent / "life", parent):
                if d.exists():
                    os.rmdir(d)

