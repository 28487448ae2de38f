"""The installed container-agent.service in the pure cgroup v2 guest, and systemd units the
v2 tests start (tests/v2host/ boots the guest; tests/test_v2_*.py run there only).

Units are started with `systemd-run` (real transient units: systemd creates the cgroups and
enables the controllers their properties need) and stopped by name at the end of a test.
"""

from __future__ import annotations

import contextlib
import json
import subprocess
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, TypeVar

import pytest

CGROUP_ROOT = Path("/sys/fs/cgroup")
SERVICE = "container-agent.service"
API = "http://127.0.0.1:9067"  # deploy/systemd/agent.toml's listen address
SOCKET = "/run/container-agent/agent.sock"
AGENTCTL = "/opt/container-agent/venv/bin/agentctl"

T = TypeVar("T")


def is_pure_v2_with_controllers() -> bool:
    controllers = CGROUP_ROOT / "cgroup.controllers"
    return controllers.exists() and {"cpu", "memory", "io", "pids"} <= set(
        controllers.read_text().split()
    )


def require_guest() -> None:
    """The v2 tests fail (not skip) on a host that is not the pure v2 guest they were meant for."""
    if not is_pure_v2_with_controllers():
        pytest.fail("not a pure cgroup v2 host with cpu, memory, io, pids: run `make test-v2`")


def run(argv: Sequence[str], timeout: float = 120, check: bool = True) -> str:
    proc = subprocess.run(list(argv), capture_output=True, text=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"{' '.join(argv)} exited {proc.returncode}: {proc.stderr.strip()}")
    return proc.stdout


def show(unit: str, *props: str) -> dict[str, str]:
    out = run(["systemctl", "show", unit, *(f"--property={p}" for p in props)])
    return dict(line.split("=", 1) for line in out.splitlines() if "=" in line)


def wait_for(predicate: Callable[[], T | None], timeout: float = 60, what: str = "") -> T:
    """Poll until predicate returns a truthy value (slow guest: generous timeouts)."""
    deadline = time.monotonic() + timeout
    last: Exception | None = None
    while time.monotonic() < deadline:
        try:
            value = predicate()
            if value:
                return value
        except (OSError, KeyError, urllib.error.URLError, json.JSONDecodeError) as e:
            last = e
        time.sleep(0.2)
    raise TimeoutError(f"not within {timeout} s: {what} (last error {last!r})")


def get(path: str) -> Any:
    with urllib.request.urlopen(API + path, timeout=30) as resp:
        return json.loads(resp.read())


def healthz_status() -> int:
    try:
        with urllib.request.urlopen(API + "/healthz", timeout=30) as resp:
            return int(resp.status)
    except urllib.error.HTTPError as e:
        return int(e.code)


def agentctl(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [AGENTCTL, "--socket", SOCKET, *args], capture_output=True, text=True, timeout=timeout
    )


def ensure_agent_running() -> None:
    run(["systemctl", "start", SERVICE], timeout=180)


def workload(name: str, timeout: float = 60) -> dict[str, Any]:
    """The agent's detail for a workload (by name or cgroup path), once it is tracked."""

    def found() -> dict[str, Any] | None:
        try:
            data: dict[str, Any] = get("/api/v1/containers/" + name.lstrip("/"))
            return data
        except urllib.error.HTTPError as e:
            if e.code == 404:
                return None
            raise

    return wait_for(found, timeout, f"agent tracks {name}")


def cgroup_of(unit: str) -> str:
    return show(unit, "ControlGroup")["ControlGroup"]


def events(kind: str, cgroup: str) -> list[dict[str, Any]]:
    data = get(f"/api/v1/events?type={kind}&limit=1000")
    rows = data["events"] if isinstance(data, dict) else data
    return [e for e in rows if e["container"]["cgroup"] == cgroup]


@contextlib.contextmanager
def transient_service(
    argv: Sequence[str], properties: Sequence[str] = (), prefix: str = "ca-v2"
) -> Iterator[str]:
    """A transient service running argv; stopped (and its failed state reset) afterwards."""
    unit = f"{prefix}-{uuid.uuid4().hex[:8]}.service"
    run(["systemd-run", "--unit", unit, "--collect", *(f"--property={p}" for p in properties),
         "--", *argv])
    try:
        yield unit
    finally:
        run(["systemctl", "stop", unit], check=False)
        run(["systemctl", "reset-failed", unit], check=False)


@contextlib.contextmanager
def transient_scope(argv: Sequence[str], prefix: str = "ca-v2") -> Iterator[tuple[str, int]]:
    """A scope (as `systemd-run --scope` makes for a command started from a shell)."""
    unit = f"{prefix}-{uuid.uuid4().hex[:8]}.scope"
    proc = subprocess.Popen(["systemd-run", "--scope", "--unit", unit, "--", *argv],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for(lambda: show(unit, "ActiveState")["ActiveState"] == "active", 60,
                 f"{unit} active")
        yield unit, proc.pid
    finally:
        run(["systemctl", "stop", unit], check=False)
        proc.wait(timeout=60)
