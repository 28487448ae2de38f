"""Shared fixtures: real test cgroups, root checks."""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.cgroups import CgroupFactory, sweep_left_prefixes
from tests.support.tracked import close_tracked

FIXTURES = Path(__file__).parent / "fixtures"

#: Outside the allowlist a skip fails a strict run (make test, CI).
pytest_plugins = ["tests.skip_allowlist"]

IS_ROOT = os.geteuid() == 0
needs_root = pytest.mark.skipif(not IS_ROOT, reason="needs root: creates real cgroups")

#: tests/test_v2_*.py need the pure cgroup v2 guest with systemd that `make test-v2` boots
#: (tests/v2host/), which sets CA_V2_GUEST=1; elsewhere they are not collected (no skips).
if os.environ.get("CA_V2_GUEST") != "1":
    collect_ignore_glob = ["test_v2_*.py"]


def _terminated(signum: int, frame: object) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def pytest_sessionstart(session: pytest.Session) -> None:
    # A run stopped by SIGTERM (`timeout`, CI's cancel) unwinds as on Ctrl-C: pytest then tears
    # the fixtures down, and the test cgroups go with them.
    signal.signal(signal.SIGTERM, _terminated)
    if IS_ROOT:  # what a run killed outright (SIGKILL) left behind
        for d in sweep_left_prefixes():
            print(f"removed a test prefix a killed run left: {d}")


@pytest.fixture
def cgroups() -> Iterator[CgroupFactory]:
    """A factory of real test cgroups under a unique prefix, removed after the test."""
    if not IS_ROOT:
        pytest.skip("needs root: creates real cgroups")
    factory = CgroupFactory(tag="py")
    try:
        yield factory
    finally:
        factory.close()


@pytest.fixture(autouse=True)
def _close_tracked() -> Iterator[None]:
    """Closes what the test's helpers opened (tests.support.tracked)."""
    yield
    close_tracked()
