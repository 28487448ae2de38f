"""sd_notify against a real AF_UNIX datagram socket, as systemd provides one."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from agent.core.sdnotify import Notifier


@pytest.fixture
def listener(tmp_path: Path) -> Iterator[tuple[socket.socket, str]]:
    path = tmp_path / "notify.sock"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(path))
    sock.settimeout(5)
    try:
        yield sock, str(path)
    finally:
        sock.close()


def _recv(sock: socket.socket) -> dict[str, str]:
    data = sock.recv(4096).decode()
    assert data.endswith("\n")
    return dict(line.split("=", 1) for line in data.splitlines())


def test_ready_status_watchdog_stopping(listener: tuple[socket.socket, str]) -> None:
    sock, path = listener
    n = Notifier({"NOTIFY_SOCKET": path})
    assert n.enabled
    assert n.ready("first snapshot: 3 workloads")
    msg = _recv(sock)
    assert msg["READY"] == "1"
    assert msg["MAINPID"] == str(os.getpid())
    assert msg["STATUS"] == "first snapshot: 3 workloads"
    assert n.status("cycle 2\nnext")
    assert _recv(sock) == {"STATUS": "cycle 2 next"}  # a newline cannot split the message
    assert n.watchdog()
    assert _recv(sock) == {"WATCHDOG": "1"}
    assert n.stopping()
    assert _recv(sock) == {"STOPPING": "1"}
    n.close()


def test_abstract_namespace_socket() -> None:
    name = f"container-agent-test-{uuid.uuid4().hex}"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(b"\0" + name.encode())
    sock.settimeout(5)
    try:
        n = Notifier({"NOTIFY_SOCKET": "@" + name})
        assert n.notify(READY=1, STATUS="ok")
        assert _recv(sock) == {"READY": "1", "STATUS": "ok"}
    finally:
        sock.close()


def test_unset_socket_is_a_noop() -> None:
    n = Notifier({})
    assert not n.enabled
    assert not n.ready()
    assert not n.watchdog()
    assert n.watchdog_interval() is None


def test_vanished_socket_does_not_raise(tmp_path: Path) -> None:
    n = Notifier({"NOTIFY_SOCKET": str(tmp_path / "gone.sock")})
    assert n.enabled
    assert not n.status("nobody listens")


def test_watchdog_interval_is_half_of_watchdog_usec() -> None:
    pid = str(os.getpid())
    assert Notifier({"WATCHDOG_USEC": "30000000"}).watchdog_interval() == 15.0
    assert Notifier({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": pid}).watchdog_interval() == 15
    # Meant for another process (e.g. inherited by a child): not ours to ping.
    other = {"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": str(os.getpid() + 1)}
    assert Notifier(other).watchdog_interval() is None
    assert Notifier({"WATCHDOG_USEC": "0"}).watchdog_interval() is None
    assert Notifier({"WATCHDOG_USEC": "junk"}).watchdog_interval() is None


def test_module_notify_reads_process_environment(listener: tuple[socket.socket, str]) -> None:
    """A child process with NOTIFY_SOCKET set, as systemd starts the agent."""
    sock, path = listener
    code = ("from agent.core.sdnotify import notify; import sys; "
            "sys.exit(0 if notify(READY=1) else 3)")
    env = dict(os.environ, NOTIFY_SOCKET=path)
    proc = subprocess.run([sys.executable, "-c", code], env=env, timeout=30)
    assert proc.returncode == 0
    assert _recv(sock)["READY"] == "1"


def test_agentd_speaks_sd_notify_like_under_systemd(
    listener: tuple[socket.socket, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The real daemon, started as systemd would start Type=notify with WatchdogSec=."""
    from tests.support.agentd import running_agent

    sock, path = listener
    sock.settimeout(30)  # start-up on a loaded machine (CRIU check, first scan) takes a while
    monkeypatch.setenv("NOTIFY_SOCKET", path)
    monkeypatch.setenv("WATCHDOG_USEC", "30000000")
    monkeypatch.delenv("WATCHDOG_PID", raising=False)
    seen: list[dict[str, str]] = []

    def until(pred: Any) -> dict[str, str]:
        while True:
            msg = _recv(sock)  # a silent daemon fails the test (socket timeout)
            seen.append(msg)
            if pred(msg):
                return msg

    with running_agent({"interval": 1}, ready=False) as agent:
        ready = until(lambda m: "READY" in m)
        assert ready["READY"] == "1" and ready["MAINPID"] == str(agent.proc.pid)
        # READY comes after the first snapshot: the API already serves it.
        assert agent.get("/healthz")["snapshot_seq"] >= 1
        until(lambda m: m.get("WATCHDOG") == "1")
        status = until(lambda m: "STATUS" in m)
        assert "workloads" in status["STATUS"]
        assert agent.stop() == 0, agent.log()[-3000:]
        until(lambda m: m.get("STOPPING") == "1")
    # Nothing before READY claimed readiness; every datagram was well formed.
    assert [m for m in seen if "READY" in m] == [ready]
