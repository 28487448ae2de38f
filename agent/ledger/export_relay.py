"""A billing export computed in a child process, sent to the HTTP client by the kernel.

An export is pure Python work (sorting, a sha256 id per row, CSV/JSON formatting): ~1 s for a
day of a busy host. Done in a thread of the agent it held the GIL against the event loop, so
/healthz took 62 ms p99 while exports ran back to back (tests/bench/bench_api_latency.py). The
child has a GIL of its own and runs at a lower priority (an export is batch work; the agent's
collection and the containers come first). It reads the ledger through its own read-only
connection (WAL: it sees the last commit and never blocks the writer) and writes the file to
its stdout (agent.ledger.export_child).

That stdout is an unnamed file in the state directory (O_TMPFILE: it vanishes when closed, also
at a kill -9). Once the child exited 0, the kernel sends the file to the client (sendfile(2))
with its Content-Length: the bytes never pass through the interpreter (relayed in 64 KiB chunks
they did, 5 MB/s of them on the event loop in tests/bench/bench_api_latency.py's back-to-back
exports). A child that fails, even after writing part of the file, is a one-line error before
any header goes out: no client is handed part of a file, not even one cut short.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from aiohttp import web

from agent.api.errors import json_error
from agent.core.exit_codes import ExitCode
from agent.ledger.export import MEDIA_TYPES
from agent.ledger.export_child import CHILD_NICE, EXIT_BAD_REQUEST, EXIT_NO_PYARROW

#: Exports running at once (more wait). A child holds its whole file while it builds it: 43 MiB
#: at its peak for a 3.3 MB csv, 60 MiB for the same rows as 7 MB of json.
MAX_CONCURRENT = 2
#: How often a client's connection is looked at while its child works (gone: the child is
#: stopped, its work is not needed).
GONE_POLL_S = 0.1
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
    """Starts export children, at most MAX_CONCURRENT at a time, and sends their files."""

    def __init__(self) -> None:
        self._slots = asyncio.Semaphore(MAX_CONCURRENT)

    async def respond(self, request: web.Request, job: ExportJob,
                      headers: dict[str, str]) -> web.StreamResponse:
        async with self._slots:
            # Made and closed in a thread: disk work (an inode; at the close, freeing the
            # file's blocks, megabytes of them) that has no place on the event loop.
            body = await asyncio.to_thread(_unnamed_file, job.db.parent)
            try:
                code, stderr = await _run_child(request, job, body)
                if code is None:
                    log.debug("billing export client left before its file was ready")
                    return web.Response(status=499)  # nobody reads it
                if code != 0:
                    return _failure(code, stderr.decode(errors="replace"))
                return await _send(request, body, job.fmt, headers)
            finally:
                await asyncio.to_thread(body.close)


def _unnamed_file(directory: Path) -> IO[bytes]:
    """O_TMPFILE where the kernel allows it: no name, gone at its close or the agent's death."""
    return tempfile.TemporaryFile(dir=directory, prefix="export-")


async def _run_child(request: web.Request, job: ExportJob, body: IO[bytes]
                     ) -> tuple[int | None, bytes]:
    """The child's exit status and stderr; None: the client left first (the child is killed)."""
    proc = await asyncio.create_subprocess_exec(
        *job.argv(), stdin=asyncio.subprocess.DEVNULL, stdout=body,
        stderr=asyncio.subprocess.PIPE)
    # At once, not at the child's main(): its interpreter's start (~90 ms of CPU, an export
    # a second) would otherwise run at the agent's priority, beside the agent's answers.
    with contextlib.suppress(OSError):  # gone already: its exit status says how it ended
        os.setpriority(os.PRIO_PROCESS, proc.pid, CHILD_NICE)
    assert proc.stderr is not None
    errors = asyncio.ensure_future(proc.stderr.read())
    done = asyncio.ensure_future(proc.wait())
    gone = asyncio.ensure_future(_client_gone(request))
    try:
        await asyncio.wait((done, gone), return_when=asyncio.FIRST_COMPLETED)
        left = gone.done()
    finally:
        gone.cancel()
        if proc.returncode is None:  # the client left (or the agent stops): not needed
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
        code = await done
        stderr = await errors
    return (None if left else code), stderr


async def _client_gone(request: web.Request) -> None:
    while (t := request.transport) is not None and not t.is_closing():
        await asyncio.sleep(GONE_POLL_S)


async def _send(request: web.Request, body: IO[bytes], fmt: str, headers: dict[str, str]
                ) -> web.StreamResponse:
    size = os.fstat(body.fileno()).st_size
    resp = web.StreamResponse(headers={"Content-Type": MEDIA_TYPES[fmt], **headers})
    resp.content_length = size
    await resp.prepare(request)
    transport = request.transport
    if transport is None:
        return resp  # the client left meanwhile
    try:
        if size:
            # The kernel copies file to socket (a TLS transport: the loop's own fallback).
            await asyncio.get_running_loop().sendfile(transport, body, 0, size)
        await resp.write_eof()
    except ConnectionError:  # the client went away mid-file
        log.debug("billing export client left before the end")
    return resp


def _failure(code: int, stderr: str) -> web.Response:
    lines = [line for line in stderr.splitlines() if line.strip()]
    reason = lines[-1] if lines else f"the export process exited with status {code}"
    if code == EXIT_BAD_REQUEST:
        return json_error(reason, ExitCode.USAGE)
    if code == EXIT_NO_PYARROW:
        return json_error(reason, ExitCode.FAILED, status=501)
    return json_error(f"export failed: {reason}", ExitCode.FAILED)
