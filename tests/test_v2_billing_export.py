"""A billing export under the hardened unit (the v2 guest only): the export's child process
(agent.ledger.export_child) starts, reads the ledger read-only in the state directory, and its
rows reach agentctl; no child is left behind."""

from __future__ import annotations

import json
import os
from typing import Any

from tests.support.v2guest import (
    SERVICE,
    agentctl,
    cgroup_of,
    ensure_agent_running,
    require_guest,
    wait_for,
)


def _export_children() -> list[int]:
    out = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                if b"agent.ledger.export_child" in f.read():
                    out.append(int(pid))
        except OSError:
            continue
    return out


def test_a_billing_export_runs_under_the_unit() -> None:
    require_guest()
    ensure_agent_running()
    own = cgroup_of(SERVICE)

    def own_cpu_rows() -> list[dict[str, Any]] | None:
        done = agentctl("billing", "export", "--from", "0", "--to", "2100-01-01T00:00:00Z",
                        "--format", "jsonl", "--include-open")
        assert done.returncode == 0, done.stderr
        rows = [json.loads(line) for line in done.stdout.splitlines()]
        mine = [r for r in rows if r["x_CgroupPath"].rstrip("/") == own.rstrip("/")
                and r["x_Meter"] == "cpu_usec"]
        return mine or None

    mine = wait_for(own_cpu_rows, 120, f"{own}'s CPU in a billing export")
    assert sum(int(r["ConsumedQuantity"]) for r in mine) > 0, mine
    assert _export_children() == []
