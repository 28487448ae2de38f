"""The skip policy: outside the allowlist a skip fails a strict run (make test, CI)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from tests.skip_allowlist import allowed

REPO = Path(__file__).resolve().parent.parent

SKIPPING = '''
import pytest

def test_needs_something():
    pytest.skip("prometheus not installed (apt-get install prometheus)")

@pytest.mark.skipif(True, reason="needs root: creates real cgroups")
def test_marked():
    pass

@pytest.mark.xfail(reason="known")
def test_expected_failure():
    assert False

def test_runs():
    assert True
'''


def _run(tmp_path: Path, **env: str) -> subprocess.CompletedProcess[str]:
    test = tmp_path / "test_skipping.py"
    test.write_text(SKIPPING)
    clean = {k: v for k, v in os.environ.items() if k not in ("CI", "CA_STRICT_SKIPS")}
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-p", "tests.skip_allowlist",
         "-q", "-rfs", "--rootdir", str(tmp_path), str(test)],
        capture_output=True, text=True, timeout=120, cwd=REPO, env={**clean, **env},
    )


def test_strict_run_fails_on_skips_outside_the_allowlist(tmp_path: Path) -> None:
    proc = _run(tmp_path, CA_STRICT_SKIPS="1")
    assert proc.returncode == 1, proc.stdout
    # A skip in the call fails the test; a skip mark (setup) errors it: both fail the run.
    assert "1 failed, 1 passed, 1 xfailed, 1 error" in proc.stdout, proc.stdout
    assert "not on the allowlist (tests/skip_allowlist.py): prometheus not installed" in proc.stdout
    assert "not on the allowlist (tests/skip_allowlist.py): needs root" in proc.stdout


def test_ci_environment_is_strict_too(tmp_path: Path) -> None:
    assert _run(tmp_path, CI="true").returncode == 1


def test_without_strict_mode_a_skip_stays_a_skip(tmp_path: Path) -> None:
    proc = _run(tmp_path)
    assert proc.returncode == 0, proc.stdout
    assert "1 passed, 2 skipped, 1 xfailed" in proc.stdout, proc.stdout


def test_allowlist_matches_file_and_reason() -> None:
    assert allowed("tests/test_control_policy.py::test_x", "needs a hybrid host")
    assert not allowed("tests/test_control_policy.py::test_x", "runc is not installed")
    assert not allowed("tests/test_other.py::test_x", "needs a hybrid host")
