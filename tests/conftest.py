"""Shared fixtures: real test cgroups, root checks."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.cgroups import CgroupFactory

FIXTURES = Path(__file__).parent / "fixtures"

IS_ROOT = os.geteuid() == 0
needs_root = pytest.mark.skipif(not IS_ROOT, reason="needs root: creates real cgroups")


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
