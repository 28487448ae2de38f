"""An LXC container (busybox template, empty network) frozen and thawed through LXC itself, so
`lxc-info` agrees; `--cgroup` still writes the cgroup file behind LXC's back."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.agentd import running_agent
from tests.support.cgroups import CgroupFactory

#: The first cycle walks every cgroup of the host, which other test runs may fill: be patient.
READY_S = 120.0


def _lxc(tool: str, lxcpath: Path, name: str, *argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([tool, "-P", str(lxcpath), "-n", name, *argv], capture_output=True,
                          text=True, timeout=120, stdin=subprocess.DEVNULL)


def _state(lxcpath: Path, name: str) -> str:
    return _lxc("lxc-info", lxcpath, name, "-s", "-H").stdout.strip()


@pytest.fixture
def lxc_container(cgroups: CgroupFactory) -> Iterator[tuple[Path, str]]:
    for tool in ("lxc-create", "lxc-start", "lxc-freeze"):
        if shutil.which(tool) is None:
            pytest.skip(f"{tool} missing (tests/setup/install-runtimes.sh installs lxc)")
    lxcpath = Path(tempfile.mkdtemp(prefix="ca-lxc-"))
    name = f"ca-lxc-{os.getpid()}-{uuid.uuid4().hex[:6]}"
    try:
        made = _lxc("lxc-create", lxcpath, name, "-t", "busybox")
        assert made.returncode == 0, made.stderr
        cfg = lxcpath / name / "config"
        lines = [x for x in cfg.read_text().splitlines() if not x.startswith("lxc.net.")]
        # No network; cgroups relative to lxc-start's own, which is a test cgroup of ours.
        lines += ["lxc.net.0.type = empty", "lxc.cgroup.relative = 1"]
        cfg.write_text("\n".join(lines) + "\n")
        starter = cgroups.create("lxc").spawn(["lxc-start", "-P", str(lxcpath), "-n", name])
        assert starter.wait(60) == 0
        assert _state(lxcpath, name) == "RUNNING"
        yield lxcpath, name
    finally:
        _lxc("lxc-stop", lxcpath, name, "-k")
        _lxc("lxc-destroy", lxcpath, name, "-f")
        shutil.rmtree(lxcpath, ignore_errors=True)


def test_freeze_and_thaw_through_lxc(lxc_container: tuple[Path, str]) -> None:
    lxcpath, name = lxc_container
    with running_agent({"interval": 1, "identity": {
            "lxc_paths": [str(lxcpath)], "docker_socket": "", "podman_socket": ""}},
            ready_timeout=READY_S) as agent:
        agent.wait_for(lambda: any(
            w["name"] == name and w["runtime"] == "lxc"
            for w in agent.get("/api/v1/containers?kind=container")["containers"]), 60)
        out = agent.agentctl("freeze", name, "--json")
        assert out.returncode == 0, out.stderr
        assert json.loads(out.stdout)["via"] == "lxc"
        assert _state(lxcpath, name) == "FROZEN"
        out = agent.agentctl("thaw", name)
        assert out.returncode == 0, out.stderr
        assert "through lxc" in out.stdout
        assert _state(lxcpath, name) == "RUNNING"
        events = agent.get("/api/v1/events?type=frozen,thawed&container=" + name)["events"]
        assert [e["fields"]["via"] for e in events] == ["lxc", "lxc"]
