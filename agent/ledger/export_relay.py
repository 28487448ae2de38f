"""A billing export computed in a child process, streamed to the HTTP client.

An export is pure Python work (sorting, a sha256 id per row, CSV/JSON formatting): ~1 s for a
day of a busy host. Done in a thread of the agent it held the GIL against the event loop, so
/healthz took 62 ms p99 while exports ran back to back (tests/bench/bench_api_latency.py). The
child has a GIL of its own and runs at a lower priority (an export is batch work; the agent's
collection and the containers come first). It reads the ledger through its own read-only
connection (WAL: it sees the last commit and never blocks the writer) and writes the file to
stdout (agent.ledger.export_child); the agent relays the bytes without holding the whole file.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sys
from dataclasses import dataclass
from pathlib import Path

from aiohttp import web

from agent.api.errors import json_error
from agent.core.exit_codes import ExitCode
from agent.ledger.export import MEDIA_TYPES
from agent.ledger.export_child import EXIT_BAD_REQUEST, EXIT_NO_PYARROW

#: Exports running at once (more wait). A child holds its whole file while it builds it: 43 MiB
#: at its peak for a 3.3 MB csv, 60 MiB for the same rows as 7 MB of json.
MAX_CONCURRENT = 2
_CHUNK = 1 << 16
log = logging.getLogger("agent.ledger.export_relay")


@dataclass(frozen=True)
class ExportJob:
    db: Path
    start: int
    end: int
    fmt: str
    group_by: str | None
    include_open: bool

    def argv(self) -> list[str]:
        args = [sys.executable, "-m", "agent.ledger.export_child", "--db", str(self.db),
                "--from", str(self.start), "--to", str(self.end), "--format", self.fmt]
        if self.group_by:
            args += ["--group-by", self.group_by]
        if self.include_open:
            args.append("--open")
        return args


class ExportRunner:
    """Starts export children, at most MAX_CONCURRENT at a time, and relays their output."""

    def __init__(self) -> None:
        self._slots = asyncio.Semaphore(MAX_CONCURRENT)

    async def respond(self, request: web.Request, job: ExportJob,
                      headers: dict[str, str]) -> web.StreamResponse:
        async with self._slots:
            proc = await asyncio.create_subprocess_exec(
                *job.argv(), stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
            assert proc.stdout is not None and proc.stderr is not None
            errors = asyncio.ensure_future(proc.stderr.read())
            try:
                return await _relay(request, proc, proc.stdout, errors, job.fmt, headers)
            finally:
                if proc.returncode is None:  # the client went away: the export is not needed
                    with contextlib.suppress(ProcessLookupError):
                        proc.kill()
                await proc.wait()
                await errors


async def _relay(request: web.Request, proc: asyncio.subprocess.Process,
                 out: asyncio.StreamReader, errors: asyncio.Future[bytes], fmt: str,
                 headers: dict[str, str]) -> web.StreamResponse:
    # The child writes only once its file is whole: until the first bytes it may still fail,
    # and the client gets the error instead of a file.
    chunk = await out.read(_CHUNK)
    if not chunk:
        code = await proc.wait()
        if code != 0:
            return _failure(code, (await errors).decode(errors="replace"))
    resp = web.StreamResponse(headers={"Content-Type": MEDIA_TYPES[fmt], **headers})
    await resp.prepare(request)
    try:
        while chunk:
            await resp.write(chunk)
            chunk = await out.read(_CHUNK)
    except ConnectionResetError:  # the client went away mid-file: its child is stopped
        log.debug("billing export client left before the end")
        return resp
    if await proc.wait() != 0:
        # Cut short after the headers went out: drop the connection without the final chunk,
        # so no client takes the part for the whole file.
        if request.transport is not None:
            request.transport.abort()
        return resp
    await resp.write_eof()
    return resp


def _failure(code: int, stderr: str) -> web.Response:
    lines = [line for line in stderr.splitlines() if line.strip()]
    reason = lines[-1] if lines else f"the export process exited with status {code}"
    if code == EXIT_BAD_REQUEST:
        return json_error(reason, ExitCode.USAGE)
    if code == EXIT_NO_PYARROW:
        return json_error(reason, ExitCode.FAILED, status=501)
    return json_error(f"export failed: {reason}", ExitCode.FAILED)
