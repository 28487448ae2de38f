"""Component health: `container_agent_component_up{component}` and the components in
`agentctl host`, for parts that start, fail to start, or die (real agentd, real tasks/threads)."""

from __future__ import annotations

import asyncio
import re
import sqlite3
import threading
from pathlib import Path

from agent.core.health import ComponentHealth
from tests.support.agentd import RunningAgent, running_agent


def _up(metrics: str) -> dict[str, int]:
    return {m[0]: int(m[1]) for m in
            re.findall(r'^container_agent_component_up\{component="([^"]+)"\} (\d)', metrics,
                       re.M)}


def test_every_part_is_up_in_metrics_and_host() -> None:
    with running_agent() as agent:
        up = agent.wait_for(lambda: _up(agent.get_text("/metrics")))
        assert {"collection", "kernel_watch", "events", "ledger", "control"} <= set(up), up
        assert set(up.values()) == {1}, up
        host = agent.get("/api/v1/host")
        assert {c["component"] for c in host["components"]} == set(up)
        out = agent.agentctl("host")
        assert out.returncode == 0, out.stderr
        assert "components:" in out.stdout
        assert "  ledger: up" in out.stdout
        assert "DOWN" not in out.stdout


def test_a_component_that_fails_to_start_is_down_with_its_reason(tmp_path: Path) -> None:
    # A state database with a foreign table where the ledger's would go: the ledger cannot
    # create its schema, so it fails to start; the rest of the agent runs on.
    state = tmp_path / "state"
    state.mkdir()
    db = sqlite3.connect(state / "agent.db")
    db.execute("CREATE TABLE ledger_meta (something_else INTEGER)")
    db.commit()
    db.close()
    agent = RunningAgent(tmp_path, {}, [])
    try:
        agent.wait_ready()
        up = agent.wait_for(lambda: _up(agent.get_text("/metrics")))
        assert up["ledger"] == 0, up
        assert up["collection"] == 1 and up["events"] == 1, up
        parts = {c["component"]: c for c in agent.get("/api/v1/host")["components"]}
        assert parts["ledger"]["up"] is False
        assert any("start" in f and "ledger_meta" in f for f in parts["ledger"]["faults"])
        out = agent.agentctl("host")
        assert re.search(r"^  ledger: DOWN \(start: .*ledger_meta", out.stdout, re.M), out.stdout
    finally:
        agent.stop()


def test_a_task_that_dies_or_a_thread_that_ends_makes_its_part_down() -> None:
    health = ComponentHealth()
    stop = threading.Event()
    worker = threading.Thread(target=stop.wait)
    worker.start()
    health.watch_thread("ledger", "writer", worker.is_alive)

    async def main() -> None:
        async def crash() -> None:
            await asyncio.sleep(0.01)
            raise RuntimeError("socket vanished")

        async def forever() -> None:
            await asyncio.sleep(3600)

        dying = health.spawn("identity", crash(), name="docker events")
        living = health.spawn("events", forever(), name="prune")
        assert {p.component: p.up for p in health.parts()} == {
            "identity": True, "events": True, "ledger": True}
        await asyncio.gather(dying, return_exceptions=True)
        await asyncio.sleep(0)  # the done callback runs on the next loop turn
        parts = {p.component: p for p in health.parts()}
        assert not parts["identity"].up
        assert parts["identity"].faults == (
            "task docker events: died: RuntimeError('socket vanished')",)
        assert parts["events"].up
        living.cancel()  # a cancelled task (shutdown) is not a fault
        await asyncio.gather(living, return_exceptions=True)
        await asyncio.sleep(0)
        assert {p.component: p.up for p in health.parts()}["events"]

    asyncio.run(main())
    stop.set()
    worker.join()
    fam = health.metric_family()
    assert {s.labels["component"]: s.value for s in fam.samples} == {
        "events": 1, "identity": 0, "ledger": 0}
    health.clear("identity", "task docker events")
    assert {p.component: p.up for p in health.parts()}["identity"]
