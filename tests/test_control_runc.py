"""A real runc container frozen and thawed by container id through agentd and agentctl."""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import IS_ROOT
from tests.support.agentd import RunningAgent, running_agent
from tests.support.cgroups import CgroupFactory
from tests.support.runc import RuncUnavailable, runc_container, runc_unavailable_reason

# busybox sh inside the container: a counter in its rootfs, one tick per 10 ms, replaced
# atomically (a freeze between truncate and write would leave an empty file).
COUNTER = ["sh", "-c", "i=0; while true; do i=$((i+1)); echo $i > /tmp/c.t; "
           "mv /tmp/c.t /tmp/count; sleep 0.01; done"]


@pytest.fixture(scope="module")
def agent() -> Iterator[RunningAgent]:
    if not IS_ROOT:
        pytest.skip("needs root")
    reason = runc_unavailable_reason()
    if reason:
        pytest.skip(reason)
    with running_agent({"interval": 1}) as a:
        yield a


def _value(path: Path) -> int:
    deadline = time.monotonic() + 10
    while True:
        try:
            return int(path.read_text())
        except (ValueError, FileNotFoundError):
            assert time.monotonic() < deadline, "container counter never written"
            time.sleep(0.01)


def _runc_status(cid: str) -> str:
    out = subprocess.run(["runc", "state", cid], capture_output=True, text=True, check=True)
    return str(json.loads(out.stdout)["status"])


def test_runc_container_freezes_and_thaws(agent: RunningAgent, cgroups: CgroupFactory) -> None:
    try:
        ctx = runc_container(cgroups, args=COUNTER)
        c = ctx.__enter__()
    except RuncUnavailable as e:
        pytest.skip(str(e))
    try:
        count = c.bundle / "rootfs" / "tmp" / "count"
        _value(count)
        agent.wait_for(lambda: any(
            w["id"] == c.id for w in agent.get("/api/v1/containers")["containers"]), 30)

        r = agent.agentctl("freeze", c.id)
        assert r.returncode == 0, r.stderr
        assert r.stdout.startswith(f"frozen: {c.cgroup} (")
        v0 = _value(count)
        time.sleep(0.3)
        assert _value(count) == v0, "container counter moved while frozen"
        if "(v1 freezer" in r.stdout:
            # The v1 freezer is runc's own on this host: runc sees its container paused.
            assert _runc_status(c.id) == "paused"

        r = agent.agentctl("thaw", c.id)
        assert r.returncode == 0, r.stderr
        deadline = time.monotonic() + 5
        while _value(count) == v0:
            assert time.monotonic() < deadline, "container counter did not resume"
            time.sleep(0.02)
        assert _runc_status(c.id) == "running"
    finally:
        ctx.__exit__(None, None, None)
