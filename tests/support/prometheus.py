"""A real Prometheus (Debian's package) on a free loopback port, for tests.

    with running_prometheus(scrape_targets=["127.0.0.1:9999"], remote_write_receiver=True) as p:
        p.query("up")

Temp config and TSDB directory; the process is stopped (by its PID) and everything removed even
when the test fails.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

BINARY = os.environ.get("PROMETHEUS_BINARY", "/usr/bin/prometheus")


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def require_prometheus() -> str:
    path = BINARY if os.access(BINARY, os.X_OK) else shutil.which("prometheus")
    if not path:
        pytest.skip("prometheus not installed (apt-get install prometheus)")
    return path


@dataclass
class RunningPrometheus:
    base_url: str
    proc: subprocess.Popen[bytes]
    workdir: Path

    @property
    def remote_write_url(self) -> str:
        return self.base_url + "/api/v1/write"

    def api(self, path: str, **params: str) -> Any:
        url = f"{self.base_url}{path}"
        if params:
            url += "?" + urllib.parse.urlencode(params)
        try:
            with urllib.request.urlopen(url, timeout=10) as r:
                body = json.load(r)
        except urllib.error.HTTPError as e:
            body = json.load(e)
        if body.get("status") != "success":
            raise AssertionError(f"{path} {params}: {body.get('error', body)}")
        return body["data"]

    def query(self, expr: str, at: float | None = None) -> list[dict[str, Any]]:
        params = {"query": expr}
        if at is not None:
            params["time"] = f"{at:.3f}"
        data = self.api("/api/v1/query", **params)
        result: list[dict[str, Any]] = data["result"]
        return result

    def targets_up(self) -> bool:
        active = self.api("/api/v1/targets")["activeTargets"]
        return bool(active) and all(t["health"] == "up" for t in active)

    def wait_for(self, predicate: Any, timeout: float = 60.0, what: str = "condition") -> Any:
        deadline = time.monotonic() + timeout
        last: Any = None
        while time.monotonic() < deadline:
            last = predicate()
            if last:
                return last
            time.sleep(0.25)
        raise AssertionError(f"timed out after {timeout}s waiting for {what} (last: {last!r})")

    def log_tail(self) -> str:
        with contextlib.suppress(OSError):
            return (self.workdir / "prometheus.log").read_text()[-4000:]
        return ""


def _config(targets: Sequence[str], scrape_interval: str, metrics_path: str) -> str:
    lines = [
        "global:",
        f"  scrape_interval: {scrape_interval}",
        # As long as the interval: a loaded test machine may answer a scrape slowly.
        f"  scrape_timeout: {scrape_interval}",
        f"  evaluation_interval: {scrape_interval}",
    ]
    if targets:
        lines += [
            "scrape_configs:",
            "  - job_name: container-agent",
            f"    metrics_path: {metrics_path}",
            "    static_configs:",
            "      - targets: [" + ", ".join(f'"{t}"' for t in targets) + "]",
        ]
    return "\n".join(lines) + "\n"


@contextlib.contextmanager
def running_prometheus(
    scrape_targets: Sequence[str] = (),
    scrape_interval: str = "1s",
    metrics_path: str = "/metrics",
    remote_write_receiver: bool = False,
    timeout: float = 60.0,
) -> Iterator[RunningPrometheus]:
    binary = require_prometheus()
    workdir = Path(tempfile.mkdtemp(prefix="ca-prom-"))
    proc: subprocess.Popen[bytes] | None = None
    try:
        config = workdir / "prometheus.yml"
        config.write_text(_config(scrape_targets, scrape_interval, metrics_path))
        port = free_port()
        args = [
            binary,
            f"--config.file={config}",
            f"--storage.tsdb.path={workdir / 'data'}",
            f"--web.listen-address=127.0.0.1:{port}",
            "--storage.tsdb.retention.time=1h",
            "--log.level=warn",
        ]
        if remote_write_receiver:
            args.append("--web.enable-remote-write-receiver")
        with open(workdir / "prometheus.log", "wb") as log:
            proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, cwd=workdir)
        prom = RunningPrometheus(f"http://127.0.0.1:{port}", proc, workdir)
        deadline = time.monotonic() + timeout
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"prometheus exited {proc.returncode}: {prom.log_tail()}")
            try:
                with urllib.request.urlopen(prom.base_url + "/-/ready", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"prometheus not ready in {timeout}s: {prom.log_tail()}")
            time.sleep(0.1)
        yield prom
    finally:
        if proc is not None and proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=15)
        shutil.rmtree(workdir, ignore_errors=True)
