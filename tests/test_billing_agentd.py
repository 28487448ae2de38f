"""End to end through a real agentd: kill -9 mid-period and restart on the same state, exact
CPU totals across a period boundary, agentctl billing exports re-run byte-identical (root)."""

from __future__ import annotations

import json
import os
import signal
import tempfile
import urllib.request
from pathlib import Path
from typing import Any

from tests.support.agentd import RunningAgent
from tests.support.cgroups import CgroupFactory

CONFIG: dict[str, Any] = {"ledger": {"period_seconds": 2, "grace_seconds": 1}}
FAR = "2100-01-01T00:00:00Z"


def _rows(agent: RunningAgent, rel: str, include_open: bool) -> list[dict[str, Any]]:
    q = "/api/v1/billing?from=0&format=jsonl" + ("&open=1" if include_open else "")
    lines = agent.get_text(q).splitlines()
    return [r for r in map(json.loads, lines) if r["x_CgroupPath"] == rel]


def _cpu(rows: list[dict[str, Any]]) -> int:
    return sum(r["ConsumedQuantity"] for r in rows
               if r["x_Meter"] == "cpu_usec" and r["x_Subject"] == "self")


def test_agentd_kill9_restart_exact_and_exports_identical(cgroups: CgroupFactory) -> None:
    cg = cgroups.create()
    assert cg.cpu_usage_usec() == 0  # a new cgroup: the kernel's delta is its counter
    with tempfile.TemporaryDirectory(prefix="ca-ledger-e2e-") as tmp:
        wd = Path(tmp)
        first = RunningAgent(wd, CONFIG, [])
        agents = [first]
        try:
            first.wait_ready()
            burner = cg.burn(4.0)
            first.wait_for(lambda: _cpu(_rows(first, cg.rel, True)) > 0, timeout=30)
            os.kill(first.proc.pid, signal.SIGKILL)
            # The kernel closes its fds on exit, a PSI trigger with an RCU grace period each:
            # seconds on a host with many cgroups (a benchmark's 500 beside CI took over 10 s).
            first.proc.wait(timeout=120)
            second = RunningAgent(wd, CONFIG, [])  # same state dir, a fresh process
            agents.append(second)
            second.wait_ready()
            burner.wait(timeout=60)
            kernel = cg.cpu_usage_usec()
            # Once every period holding the run has closed, the closed rows hold it all.
            second.wait_for(lambda: _cpu(_rows(second, cg.rel, False)) == kernel, timeout=30)
            rows = _rows(second, cg.rel, False)
            keys = [(r["x_Meter"], r["x_Subject"], r["ChargePeriodStart"], r["x_Revision"])
                    for r in rows]
            assert len(keys) == len(set(keys))
            periods = {r["ChargePeriodStart"] for r in rows
                       if r["x_Meter"] == "cpu_usec" and r["ConsumedQuantity"] > 0}
            assert len(periods) >= 2 and kernel > 200_000

            # agentctl: the same export twice is the same bytes, in every format. The range
            # ends where the ledger says periods are closed: later ones keep closing meanwhile.
            with urllib.request.urlopen(second.base_url + "/api/v1/billing?from=0") as resp:
                upto = int(resp.headers["X-Ledger-Closed-Before"])
            assert upto > 0
            args = ["billing", "export", "--from", "0", "--to", str(upto)]
            for fmt in ("csv", "jsonl", "parquet"):
                outs = []
                for n in range(2):
                    out = wd / f"export-{n}.{fmt}"
                    done = second.agentctl(*args, "--format", fmt, "--output", str(out))
                    assert done.returncode == 0, done.stderr
                    outs.append(out.read_bytes())
                assert outs[0] == outs[1] and outs[0]
            args[-1] = FAR
            done = second.agentctl(*args, "--format", "jsonl", "--group-by", "container")
            assert done.returncode == 0, done.stderr
            groups = [json.loads(x) for x in done.stdout.splitlines()]
            mine = [g for g in groups if g["x_GroupKey"] == cg.rel and g["x_Meter"] == "cpu_usec"]
            assert sum(g["ConsumedQuantity"] for g in mine) == kernel
            bad = second.agentctl("billing", "export", "--from", "soon", "--to", FAR)
            assert bad.returncode == 2 and len(bad.stderr.strip().splitlines()) == 1
        finally:
            for a in agents:
                a.stop()


def test_agentd_bills_a_100ms_cgroup_exactly(cgroups: CgroupFactory) -> None:
    with tempfile.TemporaryDirectory(prefix="ca-ledger-e2e-") as tmp:
        agent = RunningAgent(Path(tmp), CONFIG, [])
        try:
            agent.wait_ready()
            agent.wait_for(lambda: agent.get_text("/api/v1/billing?from=0&format=jsonl&open=1"))
            short = cgroups.create("short")
            short.burn(0.1).wait()
            kernel = short.cpu_usage_usec()
            # The events component reads the cgroup at `populated 0` and hands that final
            # sample to the ledger; then the cgroup goes at once, as a runtime removes it.
            def stopped() -> bool:
                events = agent.get("/api/v1/events?type=container_stopped&limit=1000")["events"]
                return any(e["container"] and e["container"]["cgroup"] == short.rel
                           and e["fields"].get("final") for e in events)
            agent.wait_for(stopped, timeout=20)
            short.remove()
            agent.wait_for(lambda: _cpu(_rows(agent, short.rel, True)) == kernel, timeout=20)
            agent.wait_for(lambda: _cpu(_rows(agent, short.rel, False)) == kernel, timeout=20)
            assert kernel > 20_000
        finally:
            agent.stop()
