"""Control end to end: a real agentd, agentctl and the Unix socket, on real test cgroups."""

from __future__ import annotations

import json
import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from agent.cli.client import AgentClient
from agent.control import criu
from agent.control.freeze_v1 import freeze as v1_freeze
from agent.control.freeze_v1 import thaw as v1_thaw
from tests.conftest import IS_ROOT
from tests.support import counter
from tests.support.agentd import RunningAgent, running_agent
from tests.support.cgroups import CgroupFactory


@pytest.fixture(scope="module")
def agent() -> Iterator[RunningAgent]:
    """One agentd for the module (it holds nothing in the test cgroups)."""
    if not IS_ROOT:
        pytest.skip("needs root: creates real cgroups")
    with running_agent({"interval": 1}) as a:
        yield a


def _ctl(agent: RunningAgent, *args: str) -> tuple[int, str, str]:
    r = agent.agentctl(*args)
    return r.returncode, r.stdout, r.stderr


def _events(agent: RunningAgent, etype: str) -> list[dict[str, Any]]:
    return list(agent.get(f"/api/v1/events?type={etype}")["events"])


def _events_of(agent: RunningAgent, etype: str, cgroup: str) -> list[dict[str, Any]]:
    return [e for e in _events(agent, etype) if (e.get("container") or {}).get("cgroup") == cgroup
            or e["fields"].get("cgroup") == cgroup]


@pytest.mark.parametrize("freezer", ["v2", "v1"])
def test_freeze_thaw_through_agentctl(
    agent: RunningAgent, cgroups: CgroupFactory, tmp_path: Path, freezer: str
) -> None:
    cg = cgroups.create()
    if freezer == "v1" and "freezer" not in cg.dirs:
        pytest.skip("no v1 freezer here")
    path = tmp_path / "count"
    counter.start_in(cg, path)
    rc, out, err = _ctl(agent, "freeze", cg.rel, "--freezer", freezer)
    assert rc == 0, err
    assert out.startswith(f"frozen: {cg.rel} ({freezer} freezer")
    assert "waiting for" in err  # progress lines arrived
    counter.assert_stalled(path, cg)
    client = AgentClient(agent.socket)
    state = client.get("/api/v1/control/state", {"target": cg.rel})
    assert state["frozen"] is True

    rc, out, err = _ctl(agent, "thaw", cg.rel)
    assert rc == 0, err
    assert out.startswith(f"thawed: {cg.rel}")
    counter.assert_running(path, cg)
    assert client.get("/api/v1/control/state", {"target": cg.rel})["frozen"] is False

    # One event each: the verb's (duration, outcome), or the kernel's cgroup.events
    # notification when it arrived first (the events component keeps one of the two).
    for etype in ("frozen", "thawed"):
        ev = _events_of(agent, etype, cg.rel)
        assert len(ev) == 1, ev
        fields = ev[0]["fields"]
        assert fields.get("source") == "kernel" or (
            fields["outcome"] == "ok" and isinstance(fields["duration_s"], float)
        ), fields


def test_socket_streams_ndjson_progress(
    agent: RunningAgent, cgroups: CgroupFactory, tmp_path: Path
) -> None:
    cg = cgroups.create()
    counter.start_in(cg, tmp_path / "count")
    client = AgentClient(agent.socket)
    lines = [json.loads(x) for x in client.stream_lines(
        "POST", "/api/v1/control/freeze", body={"target": cg.rel})]
    assert all("progress" in x for x in lines[:-1]) and len(lines) >= 2
    assert lines[-1]["exit_code"] == 0 and lines[-1]["result"]["frozen"] is True
    lines = [json.loads(x) for x in client.stream_lines(
        "POST", "/api/v1/control/thaw", body={"target": cg.rel})]
    assert lines[-1]["result"]["frozen"] is False


def test_agent_own_cgroup_and_root_are_refused(cgroups: CgroupFactory) -> None:
    # A private agentd, moved into a test cgroup: that cgroup and its parent are refused.
    # (`cgroups` was set up first, so this agent stops before the cgroups are removed.)
    with running_agent({"interval": 1}) as agent:
        rc, _out, err = _ctl(agent, "freeze", "/")
        assert rc == 6 and "root cgroup" in err and "--force" in err
        rc, _out, err = _ctl(agent, "checkpoint", "/")
        assert rc == 6
        parent = cgroups.create()
        home = parent.child("agent-home")
        home.add_pid(agent.proc.pid)
        for cg in (home, parent):
            for verb in ("freeze", "kill", "checkpoint"):
                rc, _out, err = _ctl(agent, verb, cg.rel)
                assert rc == 6 and "contains the agent" in err, (verb, err)
        assert agent.proc.poll() is None
        if "unified" in home.dirs:
            assert "frozen 0" in home.read("unified", "cgroup.events")
        # Thaw is never refused.
        rc, out, _err = _ctl(agent, "thaw", home.rel)
        assert rc == 0 and out.startswith("already running")


def test_bad_usage(agent: RunningAgent) -> None:
    rc, _out, err = _ctl(agent, "freeze", "/a/../b")
    assert rc == 2 and "'..'" in err and "Traceback" not in err
    rc, _out, err = _ctl(agent, "freeze", "no-such-container-xyz")
    assert rc == 5 and "no container" in err
    rc, _out, err = _ctl(agent, "restore", "no-such-checkpoint")
    assert rc == 5
    rc, _out, err = _ctl(agent, "rm-checkpoint", "../../etc")
    assert rc == 2


def test_timeout_rolls_back_through_agentctl(
    agent: RunningAgent, cgroups: CgroupFactory, tmp_path: Path
) -> None:
    cg = cgroups.create()
    if "freezer" not in cg.dirs or "unified" not in cg.dirs:
        pytest.skip("needs both freezers (hybrid host)")
    path = tmp_path / "count"
    counter.start_in(cg, path)
    v1_freeze(cg.dirs["freezer"])  # a task held by the v1 freezer never parks in cgroup2's
    try:
        rc, _out, err = _ctl(agent, "freeze", cg.rel, "--freezer", "v2", "--timeout", "0.5")
        assert rc == 3, err
        assert "rolled back" in err and "not frozen: pid" in err
        assert cg.read("unified", "cgroup.freeze").strip() == "0"
    finally:
        v1_thaw(cg.dirs["freezer"])
    counter.assert_running(path, cg)
    ev = [e for e in _events(agent, "frozen") if e["fields"].get("cgroup") == cg.rel]
    assert ev and ev[-1]["fields"]["outcome"] == "timed_out"


def test_kill_through_agentctl(
    agent: RunningAgent, cgroups: CgroupFactory, tmp_path: Path
) -> None:
    cg = cgroups.create()
    p = counter.start_in(cg, tmp_path / "count", child=True)
    rc, out, err = _ctl(agent, "kill", cg.rel)
    assert rc == 0, err
    assert re.match(rf"killed 2 process\(es\) in {re.escape(cg.rel)} ", out)
    assert p.wait(timeout=5) == -9 and cg.pids() == []


def test_checkpoint_restore_through_agentctl(
    agent: RunningAgent, cgroups: CgroupFactory, tmp_path: Path
) -> None:
    fact = agent.get("/api/v1/host")["facts"]["criu"]
    info = criu.find_criu()
    assert fact["available"] == info.ok
    if not info.ok:
        pytest.skip(f"no working CRIU: {info.error}")
    assert fact["version"] == info.version
    cg = cgroups.create()
    path = tmp_path / "count"
    proc = counter.start_in(cg, path, tick=0.02)
    while counter.read_counter(path) < 10:
        time.sleep(0.02)
    tar = tmp_path / "ck.tar"
    rc, out, err = _ctl(agent, "checkpoint", cg.rel, "--export", str(tar))
    assert rc == 0, err
    m = re.match(r"checkpoint (\S+): 1 process\(es\) of ", out)
    assert m, out
    cid = m.group(1)
    assert tar.stat().st_size > 0 and "criu" in err
    assert proc.wait(timeout=10) == -9
    value = counter.read_counter(path)

    rc, out, err = _ctl(agent, "checkpoints")
    assert rc == 0 and cid in out and cg.rel in out

    path.write_text("restored?")
    rc, out, err = _ctl(agent, "restore", cid)
    assert rc == 0, err
    assert out.startswith(f"restored {cid} into {cg.rel}: pids {proc.pid}")
    deadline = time.monotonic() + 10
    while path.read_text() == "restored?":
        assert time.monotonic() < deadline
        time.sleep(0.01)
    assert value < int(path.read_text()) <= value + 25
    counter.assert_running(path, cg)

    rc, out, _err = _ctl(agent, "rm-checkpoint", cid)
    assert rc == 0 and cid in out
    assert cid not in _ctl(agent, "checkpoints")[1]
    cp = [e for e in _events(agent, "checkpointed") if e["fields"].get("id") == cid]
    rs = [e for e in _events(agent, "restored") if e["fields"].get("checkpoint") == cid]
    assert cp and cp[-1]["fields"]["outcome"] == "ok"
    assert rs and rs[-1]["fields"]["pids"] == [proc.pid]
