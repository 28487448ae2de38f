"""What test helpers open for one test (stores, readers): closed at its teardown.

Helpers that return an open resource instead of yielding it register it here; conftest's
autouse fixture closes it after the test, so a test's writer thread, connections and kept
cgroup fds do not outlive it (a later test counting fds or threads would see them).
"""

from __future__ import annotations

import contextlib
from typing import Protocol, TypeVar


class Closeable(Protocol):
    def close(self) -> None: ...


C = TypeVar("C", bound=Closeable)

_OPEN: list[Closeable] = []


def track(resource: C) -> C:
    """`resource`, closed when the current test ends."""
    _OPEN.append(resource)
    return resource


def close_tracked() -> None:
    while _OPEN:
        resource = _OPEN.pop()
        with contextlib.suppress(Exception):  # closing twice is allowed to fail
            resource.close()
