"""The tests' own clean-up: a run stopped by SIGTERM removes its cgroups, and what a run killed
outright left is swept at the next start (only empty prefixes of test processes that are gone)."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from pathlib import Path

from collectors.layout import detect_layout
from tests.conftest import needs_root
from tests.support.cgroups import prefix_bases, sweep_left_prefixes

REPO = Path(__file__).resolve().parent.parent


@needs_root
def test_a_run_stopped_by_sigterm_removes_its_test_cgroups() -> None:
    proc = subprocess.Popen(
        [sys.executable, "-m", "pytest", "-q", "-s", "-p", "no:cacheprovider",
         "tests/support/sigterm_probe.py"],
        cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        assert proc.stdout is not None
        prefix = None
        for line in proc.stdout:
            if line.startswith("PREFIX "):
                prefix = Path(line.split(" ", 1)[1].strip())
                break
        assert prefix is not None and prefix.is_dir()
        proc.terminate()
        proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert not prefix.exists()


def _dead_pid() -> int:
    child = subprocess.Popen(["true"])
    child.wait()
    return child.pid


@needs_root
def test_the_sweep_removes_empty_prefixes_of_gone_runs_only() -> None:
    base = prefix_bases(detect_layout())
    key = "unified" if "unified" in base else next(iter(base))
    dead = _dead_pid()
    left = base[key] / f"ca-test-py-{dead}-{uuid.uuid4().hex[:8]}"
    busy = base[key] / f"ca-test-py-{dead}-{uuid.uuid4().hex[:8]}"
    alive = base[key] / f"ca-test-py-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    other = base[key] / f"ca-test-other-{uuid.uuid4().hex[:8]}"
    for d in (left, left / "cg-1", busy, busy / "cg-1", alive, other):
        d.mkdir()
    sleeper = subprocess.Popen(["sleep", "60"])
    try:
        (busy / "cg-1" / "cgroup.procs").write_text(str(sleeper.pid))
        removed = sweep_left_prefixes()
        assert left in removed and not left.exists()
        assert busy.exists() and alive.exists() and other.exists()
    finally:
        sleeper.kill()
        sleeper.wait()
        for d in (busy / "cg-1", busy, alive, other, left / "cg-1", left):
            if d.exists():
                d.rmdir()
