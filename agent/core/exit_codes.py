"""Exit codes shared by agentctl and the API's error bodies."""

from __future__ import annotations

from enum import IntEnum


class ExitCode(IntEnum):
    OK = 0
    #: The operation failed; nothing was changed.
    FAILED = 1
    #: Bad usage: unknown verb, bad argument, bad configuration.
    USAGE = 2
    #: Timed out and rolled back.
    TIMED_OUT = 3
    #: The daemon is not running or its socket is not reachable.
    UNAVAILABLE = 4
    #: No such container, cgroup, checkpoint or event.
    NOT_FOUND = 5
    #: Refused by policy (protected cgroup) unless forced.
    REFUSED = 6
