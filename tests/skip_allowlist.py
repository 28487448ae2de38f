"""Skips the test run accepts; every other skip is turned into a failure when the run is strict
(`make test` sets CA_STRICT_SKIPS=1; CI=true does too), so a missing install step or a broken
component cannot hide as a skip. Loaded as a pytest plugin by tests/conftest.py.

Each entry: (test file, text the skip reason contains, why the skip is acceptable). Only skips
that depend on the host's cgroup layout or kernel are here; the CI host (hybrid cgroups, kernel
6.x, root) runs every test, and the pure v2 side runs in the guest of `make test-v2`.
"""

from __future__ import annotations

import os
from collections.abc import Generator

import pytest

ALLOWED: tuple[tuple[str, str, str], ...] = (
    # v1-only paths: absent on pure v2 hosts (the v2 counterparts run there).
    ("tests/test_cgroupfs_real.py", "v1 paths exist on hybrid and legacy hosts only", "pure v2"),
    ("tests/test_cgroupfs_real.py", "no v1 freezer hierarchy", "pure v2"),
    ("tests/test_control_freeze.py", "no v1 freezer hierarchy", "pure v2"),
    ("tests/test_control_agent.py", "no v1 freezer here", "pure v2"),
    ("tests/test_control_agent.py", "needs both freezers (hybrid host)", "v2 or legacy"),
    ("tests/test_control_policy.py", "needs a hybrid host", "v2 or legacy"),
    ("tests/test_discovery_runc.py", "hierarchy on this host", "v1 controller absent: pure v2"),
    # cgroup2-only features: absent on legacy v1 hosts and on kernels before 5.2 / 5.14.
    ("tests/test_control_freeze.py", "no cgroup2 tree on this host", "legacy v1"),
    ("tests/test_cgroupfs_real.py", "no cgroup2 mount", "legacy v1"),
    ("tests/test_cgroupfs_real.py", "no cgroup.freeze on this host", "kernel < 5.2"),
    ("tests/test_control_policy.py", "no cgroup.kill on this kernel", "kernel < 5.14"),
    # On a pure v2 host the test process's own cgroup holds processes, so its controllers
    # cannot be enabled for test cgroups ("no internal processes"); `make test-v2` covers them.
    ("tests/test_events_kernel.py", "test cgroups have no", "pure v2 without delegation"),
    ("tests/test_daemon_e2e.py", "no cpu controller to set a quota with", "pure v2, ditto"),
    ("tests/test_events_e2e.py", "no pids controller", "pure v2, ditto"),
)


def strict() -> bool:
    return os.environ.get("CA_STRICT_SKIPS") == "1" or os.environ.get("CI", "") == "true"


def allowed(nodeid: str, reason: str) -> bool:
    path = nodeid.split("::", 1)[0]
    return any(path == f and text in reason for f, text, _why in ALLOWED)


def _reason(report: pytest.TestReport) -> str:
    longrepr = report.longrepr
    if isinstance(longrepr, tuple) and len(longrepr) == 3:
        return str(longrepr[2]).removeprefix("Skipped: ")
    return str(longrepr)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, None]:
    outcome = yield
    report: pytest.TestReport = outcome.get_result()
    if not report.skipped or hasattr(report, "wasxfail") or not strict():
        return
    reason = _reason(report)
    if not allowed(report.nodeid, reason):
        report.outcome = "failed"
        report.longrepr = (
            f"skipped, and the skip is not on the allowlist (tests/skip_allowlist.py): {reason}\n"
            "Install what the test needs (tests/setup/) or fix the failure behind the skip."
        )
