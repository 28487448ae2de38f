"""What a churn run left in a real agentd, judged life by life against the kernel.

Per life (cgroup path and inode): its container_started / container_stopped events, whether the
stopped event's final CPU equals the kernel's last usage_usec the churn read before rmdir, and
whether the ledger rows of that incarnation sum to it. For the churn's parent (the prefix):
billed (its children's rows) + its `unattributed` rows against its own kernel delta, over
closed periods.
"""

from __future__ import annotations

import json
import re
import time
import urllib.request
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.support.agentd import RunningAgent
from tests.support.churn import Life

_FINALS = re.compile(r"^container_agent_ledger_final_samples_total (\S+)$", re.M)


def events(agent: RunningAgent, etype: str) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    since = 0
    while True:
        page = agent.get(f"/api/v1/events?type={etype}&since={since}&limit=10000")["events"]
        out.extend(page)
        if len(page) < 10000:
            return out
        since = page[-1]["id"]


def billing(agent: RunningAgent) -> tuple[list[dict[str, Any]], int]:
    """Closed ledger rows (every revision) and X-Ledger-Closed-Before."""
    url = agent.base_url + "/api/v1/billing?from=0&format=jsonl"
    with urllib.request.urlopen(url, timeout=60) as resp:
        closed_before = int(resp.headers["X-Ledger-Closed-Before"])
        body = resp.read().decode()
    return [json.loads(x) for x in body.splitlines()], closed_before


def usage_usec(cgroup_dir: Path) -> int:
    for line in (cgroup_dir / "cpu.stat").read_text().splitlines():
        k, v = line.split()
        if k == "usage_usec":
            return int(v)
    raise OSError(f"no usage_usec in {cgroup_dir}")


def final_samples_recorded(agent: RunningAgent) -> int:
    m = _FINALS.search(agent.get_text("/metrics"))
    return int(float(m.group(1))) if m else 0


def wait_settled(agent: RunningAgent, after_wall_s: float, timeout: float = 90,
                 finals_since: int = 0) -> None:
    """Until every period up to `after_wall_s` is closed and the ledger has written every final
    sample this agentd's events component handed it (final container_stopped events with an
    id above `finals_since`: the ones of this process)."""
    def settled() -> bool:
        finals = sum(1 for e in events(agent, "container_stopped")
                     if e["fields"].get("final") and e["id"] > finals_since)
        return billing(agent)[1] > after_wall_s and final_samples_recorded(agent) >= finals
    agent.wait_for(settled, timeout=timeout, interval=0.5)


@dataclass
class Verdict:
    lives: int = 0
    started: int = 0
    stopped: int = 0
    #: stopped with final: true (the agent read it at `populated 0`).
    finals: int = 0
    #: stopped with final: true and cpu_usage_usec == the kernel's last usage_usec.
    final_exact: int = 0
    #: final and final_partial (removed before the full read: CPU read at `populated 0`).
    partial: int = 0
    #: partial and below the kernel's last value: the exiting task's last slice, charged at
    #: its final context switch after `populated 0`, came after the read.
    partial_short: int = 0
    #: the incarnation's cpu_usec rows sum to the kernel's last usage_usec.
    billed_exact: int = 0
    #: both of the above.
    exact: int = 0
    parent_delta: int = 0
    parent_self: int = 0
    billed: int = 0
    unattributed: int = 0
    #: (incarnation, subject, meter, period, revision) seen more than once.
    duplicate_rows: int = 0
    #: lives billed more CPU than the kernel counted (something counted twice).
    over_billed: int = 0
    #: lives with a final read whose billing is not the CPU their stopped event gave.
    final_not_billed: int = 0
    misses: list[str] = field(default_factory=list)

    def summary(self) -> str:
        return (f"{self.lives} lives: started {self.started}, stopped {self.stopped}, final "
                f"{self.finals} (CPU only {self.partial}, of them short {self.partial_short}), "
                f"final CPU exact {self.final_exact}, billed exact "
                f"{self.billed_exact}, both {self.exact}; "
                f"parent delta {self.parent_delta} = self {self.parent_self}; billed "
                f"{self.billed} + unattributed {self.unattributed} = "
                f"{self.billed + self.unattributed}; duplicate rows {self.duplicate_rows}, lives "
                f"billed above the kernel {self.over_billed}, read at the end but not billed "
                f"exactly {self.final_not_billed}")


def judge(lives: list[Life], started: list[dict[str, Any]], stopped: list[dict[str, Any]],
          rows: list[dict[str, Any]], prefix_rel: str, parent_delta: int) -> Verdict:
    v = Verdict(lives=len(lives), parent_delta=parent_delta)
    by_path: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for e in stopped:
        if e.get("container"):
            by_path[e["container"]["cgroup"]].append(e)
    started_n = Counter(e["container"]["cgroup"] for e in started if e.get("container"))
    cpu: Counter[tuple[str, int]] = Counter()
    keys: Counter[tuple[Any, ...]] = Counter()
    for r in rows:
        keys[(r["x_BootId"], r["x_CgroupInode"], r["x_Subject"], r["x_Meter"],
              r["ChargePeriodStart"], r["x_Revision"])] += 1
        if r["x_Meter"] != "cpu_usec":
            continue
        path = r["x_CgroupPath"]
        if r["x_Subject"] == "self":
            cpu[(path, r["x_CgroupInode"])] += r["ConsumedQuantity"]
            if path == prefix_rel:
                v.parent_self += r["ConsumedQuantity"]
            elif path.startswith(prefix_rel + "/"):
                v.billed += r["ConsumedQuantity"]
        elif path == prefix_rel:
            v.unattributed += r["ConsumedQuantity"]
    v.duplicate_rows = sum(n - 1 for n in keys.values() if n > 1)
    for life in lives:
        mine = [e for e in by_path.get(life.rel, []) if e["container"]["inode"] == life.inode]
        v.started += started_n[life.rel] == 1
        v.stopped += len(mine) == 1
        fields = mine[0]["fields"] if len(mine) == 1 else {}
        final = bool(fields.get("final"))
        said = fields.get("cpu_usage_usec")
        v.finals += final
        final_ok = final and said == life.usage_usec
        partial = final and bool(fields.get("final_partial"))
        v.partial += partial
        v.partial_short += partial and isinstance(said, int) and said < life.usage_usec
        billed = cpu[(life.rel, life.inode)]
        billed_ok = billed == life.usage_usec
        v.final_exact += final_ok
        v.billed_exact += billed_ok
        v.over_billed += billed > life.usage_usec
        v.final_not_billed += final and billed != said
        v.exact += final_ok and billed_ok
        if not (final_ok and billed_ok and started_n[life.rel] == 1):
            said = [(e["fields"].get("final"), e["fields"].get("final_partial"),
                     e["fields"].get("cpu_usage_usec")) for e in by_path.get(life.rel, [])]
            miss = (f"{life.rel.rsplit('/', 1)[-1]}: kernel {life.usage_usec}, started "
                    f"{started_n[life.rel]}, stopped (final, partial, cpu) {said}, billed {billed}")
            # Wrong values first: they matter more than lives missed.
            if fields.get("final") and not final_ok:
                v.misses.insert(0, miss)
            elif len(v.misses) < 20:
                v.misses.append(miss)
    return v


def wait_read_after_now(agent: RunningAgent, timeout: float = 60) -> None:
    """Until the agent has published a snapshot read wholly after this call: the second after
    the current one (the next may have been mid-cycle when this was called)."""
    seq0 = int(agent.get("/healthz")["snapshot_seq"])
    agent.wait_for(lambda: int(agent.get("/healthz")["snapshot_seq"]) >= seq0 + 2,
                   timeout=timeout, interval=0.1)


def settle_and_judge(agent: RunningAgent, lives: list[Life], prefix_rel: str,
                     parent_delta: int, finals_since: int = 0) -> Verdict:
    """Call it once the churn is over and `parent_delta` read. The parent's CPU after its last
    read during the churn (its last `populated 0`, or the last cycle) is billed by the first
    cycle after the churn, in that cycle's period: so every period up to a cycle read after
    now must close, not only those up to now (which left the parent's rows short by that
    remainder whenever the next cycle fell into the next period)."""
    wait_read_after_now(agent)
    wait_settled(agent, time.time(), finals_since=finals_since)
    rows, _ = billing(agent)
    return judge(lives, events(agent, "container_started"), events(agent, "container_stopped"),
                 rows, prefix_rel, parent_delta)
