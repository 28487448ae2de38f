"""A tree change amends the snapshot published when its amendment is done: a cycle that
publishes a newer snapshot meanwhile is not undone.

The agent's own code on a cgroup tree of plain directories; the amendment is held at a gate
(the collector's `amend`, wrapped) while a newer snapshot is published, as a cycle does. An
amendment of the older snapshot, published after, took /healthz, the API and /metrics a cycle
back (a soak at 1,000 cgroups: /metrics rendered and compressed old snapshots again, 100-170
ms a scrape).
"""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path

from agent.core.config import load_config
from agent.core.daemon import Agent
from agent.model.snapshot import Snapshot
from collectors.layout import CgroupLayout, LayoutKind
from tests.test_ledger_support import snapshot


def test_an_amendment_does_not_publish_over_a_newer_cycle(tmp_path: Path) -> None:
    root = tmp_path / "cgroup"
    (root / "a").mkdir(parents=True)
    config = load_config(None, [], {"state_dir": str(tmp_path / "state")})
    agent = Agent(config, CgroupLayout(LayoutKind.UNIFIED, root), [])
    gate, entered = threading.Event(), threading.Event()
    amend = agent.collector.amend

    def held_amend(snap: Snapshot, *args: object) -> Snapshot:
        entered.set()
        gate.wait(10)
        return amend(snap, *args)  # type: ignore[arg-type]

    agent.collector.amend = held_amend  # type: ignore[method-assign,assignment]

    async def run() -> Snapshot | None:
        agent.snapshot = snapshot([], seq=1)
        agent._on_tree_change(["/a"], [], False)
        assert await asyncio.to_thread(entered.wait, 10)
        agent.snapshot = snapshot([], seq=2)  # a cycle publishes meanwhile
        gate.set()
        assert agent._applying is not None
        await agent._applying
        return agent.snapshot

    try:
        published = asyncio.run(run())
    finally:
        agent.store.close()
    assert published is not None
    assert published.seq == 2
    assert [w.identity.cgroup for w in published.workloads.values()] == ["/a"]
