"""The one error type control operations raise: a line for the user and an exit code."""

from __future__ import annotations

from collections.abc import Mapping

from agent.core.exit_codes import ExitCode


class ControlError(Exception):
    """A control operation that did not happen (or was rolled back)."""

    def __init__(
        self,
        message: str,
        exit_code: ExitCode = ExitCode.FAILED,
        details: Mapping[str, object] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.exit_code = exit_code
        #: Structured extras for the API (stuck tasks, CRIU log lines, process roots).
        self.details: dict[str, object] = dict(details or {})
