"""Shared fixtures: real test cgroups, root checks."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.cgroups import CgroupFactory
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
