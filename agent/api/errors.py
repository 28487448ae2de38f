"""JSON error answers carrying the exit code agentctl should leave with."""

from __future__ import annotations

from aiohttp import web

from agent.core.exit_codes import ExitCode

_STATUS = {
    ExitCode.FAILED: 500,
    ExitCode.USAGE: 400,
    ExitCode.TIMED_OUT: 504,
    ExitCode.UNAVAILABLE: 503,
    ExitCode.NOT_FOUND: 404,
    ExitCode.REFUSED: 403,
}


def json_error(message: str, exit_code: ExitCode, status: int | None = None) -> web.Response:
    """An error response: one line of text, and the exit code for agentctl."""
    line = message.replace("\n", " ").strip()
    return web.json_response(
        {"error": line, "exit_code": int(exit_code)},
        status=status or _STATUS.get(exit_code, 500),
    )
