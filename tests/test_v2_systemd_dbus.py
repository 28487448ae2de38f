"""systemd units frozen, thawed and killed through systemd over D-Bus, so `systemctl` agrees.

Runs only in the pure cgroup v2 guest whose PID 1 is systemd (`make test-v2`, CA_V2_GUEST=1;
tests/conftest.py does not collect tests/test_v2_*.py elsewhere). The agent is the installed
container-agent.service; the workload a transient unit of `systemd-run`, stopped by name.
"""

from __future__ import annotations

import json
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

AGENTCTL = "/opt/container-agent/venv/bin/agentctl"
SOCKET = "/run/container-agent/agent.sock"


def _run(*argv: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    res = subprocess.run(list(argv), capture_output=True, text=True, timeout=120)
    if check and res.returncode != 0:
        raise AssertionError(f"{' '.join(argv)} exited {res.returncode}: {res.stderr.strip()}")
    return res


def _prop(unit: str, name: str) -> str:
    return _run("systemctl", "show", unit, f"--property={name}", "--value").stdout.strip()


def _agentctl(*argv: str) -> subprocess.CompletedProcess[str]:
    return _run(AGENTCTL, "--socket", SOCKET, *argv, check=False)


@pytest.fixture
def unit() -> Iterator[str]:
    if Path("/proc/1/comm").read_text().strip() != "systemd":
        pytest.fail("PID 1 is not systemd: these tests belong to the v2 guest (make test-v2)")
    name = f"ca-dbus-{uuid.uuid4().hex[:8]}.service"
    _run("systemd-run", "--unit", name, "--property=Type=exec", "sleep", "1000")
    try:
        deadline = time.monotonic() + 60
        while _agentctl("show", name).returncode != 0:  # the agent has seen it
            assert time.monotonic() < deadline, "the agent never listed the unit"
            time.sleep(0.5)
        yield name
    finally:
        _run("systemctl", "thaw", name, check=False)
        _run("systemctl", "stop", name, check=False)


def test_freeze_thaw_through_systemd(unit: str) -> None:
    out = _agentctl("freeze", unit, "--json")
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["via"] == "systemd"
    assert _prop(unit, "FreezerState") == "frozen"
    out = _agentctl("thaw", unit, "--json")
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["via"] == "systemd"
    assert _prop(unit, "FreezerState") == "running"


def test_cgroup_flag_bypasses_systemd(unit: str) -> None:
    out = _agentctl("freeze", unit, "--cgroup", "--json")
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["via"] == "cgroup"
    assert _prop(unit, "FreezerState") == "running"  # systemd was not told
    assert _agentctl("thaw", unit, "--cgroup").returncode == 0


def test_kill_through_systemd(unit: str) -> None:
    out = _agentctl("kill", unit, "--json")
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["via"] == "systemd"
    deadline = time.monotonic() + 30
    while _prop(unit, "ActiveState") not in ("failed", "inactive"):
        assert time.monotonic() < deadline
        time.sleep(0.2)
