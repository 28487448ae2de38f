"""Start a real `agentd` subprocess for end-to-end tests, and talk to it."""

from __future__ import annotations

import contextlib
import json
import os
import resource
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _toml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return repr(v)
    if isinstance(v, str):
        return json.dumps(v)
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    if isinstance(v, dict):  # an inline table inside a section
        return "{" + ", ".join(f"{json.dumps(k)} = {_toml_value(x)}" for k, x in v.items()) + "}"
    raise TypeError(f"cannot write {v!r} as TOML")


def write_toml(path: Path, config: dict[str, Any]) -> None:
    lines = [f"{k} = {_toml_value(v)}" for k, v in config.items() if not isinstance(v, dict)]
    for k, v in config.items():
        if isinstance(v, dict):
            lines.append(f"\n[{k}]")
            lines.extend(f"{kk} = {_toml_value(vv)}" for kk, vv in v.items())
    path.write_text("\n".join(lines) + "\n")


class RunningAgent:
    def __init__(self, workdir: Path, config: dict[str, Any], args: list[str],
                 nofile: int | None = None, code: Path | None = None) -> None:
        """`code`: the checkout whose `agent` package runs (default: this one); benchmarks
        compare another checkout's code on the same tree with it."""
        self.workdir = workdir
        self.port = free_port()
        self.state_dir = workdir / "state"
        self.socket = workdir / "agent.sock"
        self.base_url = f"http://127.0.0.1:{self.port}"
        full = {"interval": 1, "listen": f"127.0.0.1:{self.port}", "socket": str(self.socket),
                "state_dir": str(self.state_dir), "log_level": "info", **config}
        self.config_path = workdir / "agent.toml"
        write_toml(self.config_path, full)
        self.log_path = workdir / "agentd.log"
        self._log = open(self.log_path, "wb")  # noqa: SIM115 - closed in stop()
        self._final_log: str | None = None
        # This checkout's code, not the one the venv was installed from (a worktree's tests
        # would otherwise run another branch's agentd).
        env = dict(os.environ, PYTHONUNBUFFERED="1", PYTHONPATH=str(code or REPO))

        def limit() -> None:  # `nofile`: the open-file limit, soft and hard
            if nofile is not None:
                resource.setrlimit(resource.RLIMIT_NOFILE, (nofile, nofile))

        self.proc = subprocess.Popen(
            [str(BIN / "agentd"), "--config", str(self.config_path), *args],
            stdout=self._log, stderr=subprocess.STDOUT, env=env, cwd=str(workdir),
            preexec_fn=limit,
        )

    def log(self) -> str:
        """The daemon's output so far (kept after stop(), when the temp dir is gone)."""
        if self._final_log is not None:
            return self._final_log
        return self.log_path.read_text(errors="replace")

    def get_text(self, path: str, headers: dict[str, str] | None = None) -> str:
        req = urllib.request.Request(self.base_url + path, headers=headers or {})
        with urllib.request.urlopen(req, timeout=10) as resp:
            return str(resp.read().decode())

    def get(self, path: str) -> Any:
        return json.loads(self.get_text(path))

    def agentctl(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(BIN / "agentctl"), "--socket", str(self.socket), *args],
            capture_output=True, text=True, timeout=timeout,
        )

    def wait_for(self, predicate: Callable[[], Any], timeout: float = 15.0,
                 interval: float = 0.05) -> Any:
        deadline = time.monotonic() + timeout
        last_exc: Exception | None = None
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"agentd exited with {self.proc.returncode}:\n{self.log()}")
            try:
                value = predicate()
                if value:
                    return value
            except (urllib.error.URLError, ConnectionError, OSError, KeyError) as e:
                last_exc = e
            time.sleep(interval)
        raise TimeoutError(f"condition not met in {timeout} s (last error {last_exc!r})\n"
                           f"agentd log:\n{self.log()[-4000:]}")

    def wait_ready(self, timeout: float = 30.0) -> None:
        def ready() -> bool:
            try:
                return bool(self.get("/healthz")["status"] == "ok")
            except urllib.error.HTTPError:
                return False
        self.wait_for(ready, timeout)

    def stop(self, timeout: float = 20.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()
        self._final_log = self.log_path.read_text(errors="replace")
        return int(self.proc.returncode)


@contextlib.contextmanager
def running_agent(
    config: dict[str, Any] | None = None, args: list[str] | None = None, ready: bool = True,
    ready_timeout: float = 30.0, nofile: int | None = None,
) -> Iterator[RunningAgent]:
    with tempfile.TemporaryDirectory(prefix="ca-agentd-") as tmp:
        agent = RunningAgent(Path(tmp), config or {}, args or [], nofile)
        try:
            if ready:
                agent.wait_ready(ready_timeout)
            yield agent
        finally:
            agent.stop()
