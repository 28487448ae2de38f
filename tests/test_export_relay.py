"""Billing exports run in a child process (agent.ledger.export_relay): the file is the one the
in-process export would give, it is not computed in the agent's process, the kernel sends it
whole with its length and nothing stays in the state directory, the child's failures reach the
client as one-line errors (also after part of the file was written: never taken for the whole
file), and a client that goes away takes its child with it.

The `_FakeChild` jobs run a shell or Python one-liner in place of the export child, to fail
in ways the real one seldom does; the rest runs the real child on a real ledger database."""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

import agent.ledger.export as export_mod
from agent.ledger.component import LedgerComponent
from agent.ledger.export import export
from agent.ledger.export_child import CHILD_NICE
from agent.ledger.export_relay import ExportJob, ExportRunner
from agent.ledger.periods import NS
from tests.test_ledger_support import context, ident, snapshot, synth

T0 = 1_800_000_000


async def _ledger_with_rows(state_dir: Path) -> LedgerComponent:
    comp = LedgerComponent()
    await comp.start(context(state_dir, {"period_seconds": 10, "grace_seconds": 0}))
    for i, path in enumerate(("/a", "/b", "/a/c"), start=5):
        w = ident(path, i)
        await comp.on_snapshot(snapshot([(w, synth(path, i, T0 + 1, cpu=100 * i))],
                                        boot=comp.boot_id))
        await comp.on_snapshot(snapshot([(w, synth(path, i, T0 + 4, cpu=900 * i))],
                                        boot=comp.boot_id))
    assert comp.ledger is not None
    comp.ledger.close_due((T0 + 20) * NS)
    return comp


async def _exports(state_dir: Path) -> dict[str, Any]:
    comp = await _ledger_with_rows(state_dir)
    assert comp.ledger is not None
    storage = comp.ledger.storage
    out: dict[str, Any] = {}
    app = web.Application()
    app.add_routes(comp.routes())
    async with TestClient(TestServer(app)) as client:
        for fmt in ("csv", "jsonl", "json", "parquet"):
            r = await client.get("/api/v1/billing", params={"from": "0", "format": fmt})
            out[fmt] = (r.status, r.headers["Content-Type"], await r.read(),
                        export(await asyncio.to_thread(storage.rows, 0, 2**62), fmt))
        r = await client.get("/api/v1/billing",
                             params={"from": "0", "format": "csv", "group_by": "runtime"})
        out["grouped"] = (await r.read(), export(storage.rows(0, 2**62), "csv", "runtime"))
    await comp.stop()
    return out


def test_the_child_gives_the_in_process_file_byte_for_byte(tmp_path: Path) -> None:
    out = asyncio.run(_exports(tmp_path))
    for fmt in ("csv", "jsonl", "json", "parquet"):
        status, media, body, (expected, expected_media) = out[fmt]
        assert status == 200, body
        assert media == expected_media
        assert body == expected and len(body) > 100, fmt
    body, (expected, _) = out["grouped"]
    assert body == expected and b",runtime,runc," in body


def test_the_export_is_not_computed_in_the_agents_process(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """What would hold the agent's GIL: the row building and the rendering. Broken here, in
    this process only: the child, a process of its own, still renders."""
    def broken(*_a: object, **_k: object) -> bytes:
        raise AssertionError("rendered in the agent's process")

    monkeypatch.setattr(export_mod, "render_csv", broken)
    monkeypatch.setattr(export_mod, "build_rows", broken)
    out = asyncio.run(_only_csv(tmp_path))
    assert out[0] == 200 and out[1].startswith(b"RecordId,x_SchemaVersion,")
    assert out[1].count(b"\n") == 1 + out[2]  # a header and every stored row


async def _only_csv(state_dir: Path) -> tuple[int, bytes, int]:
    comp = await _ledger_with_rows(state_dir)
    app = web.Application()
    app.add_routes(comp.routes())
    async with TestClient(TestServer(app)) as client:
        r = await client.get("/api/v1/billing", params={"from": "0", "format": "csv"})
        got = (r.status, await r.read())
    assert comp.ledger is not None
    stored = len(comp.ledger.storage.rows(0, 2**62))
    await comp.stop()
    return got[0], got[1], stored


def test_parquet_without_pyarrow_is_a_clear_501(tmp_path: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    blocker = tmp_path / "blocker" / "pyarrow"
    blocker.mkdir(parents=True)
    (blocker / "__init__.py").write_text("raise ImportError('pyarrow hidden for this test')\n")
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(
        [str(blocker.parent), *filter(None, [os.environ.get("PYTHONPATH")])]))

    async def run() -> tuple[int, dict[str, Any]]:
        comp = await _ledger_with_rows(tmp_path / "state")
        app = web.Application()
        app.add_routes(comp.routes())
        async with TestClient(TestServer(app)) as client:
            r = await client.get("/api/v1/billing", params={"from": "0", "format": "parquet"})
            got = (r.status, await r.json())
        await comp.stop()
        return got

    status, body = asyncio.run(run())
    assert status == 501 and body["exit_code"] == 1
    assert body["error"] == "format parquet needs pyarrow (pip install 'container-agent[parquet]')"


@dataclass(frozen=True)
class _FakeChild(ExportJob):
    """A named fake: `command` in place of the export child."""
    command: tuple[str, ...] = ()

    def argv(self) -> list[str]:
        return list(self.command)


#: Where the fakes' files are made (a real job's: its ledger's directory).
_FAKE_DB = Path(tempfile.gettempdir()) / "no-ledger.db"


def _fake(script: str) -> _FakeChild:
    return _FakeChild(_FAKE_DB, 0, 1, "csv", None, False, command=("/bin/sh", "-c", script))


class _AgentLikeServer(TestServer):
    """aiohttp's test server cancels a handler whose client left; the agent's server
    (agent.core.daemon) does not, as aiohttp's default: the export sees the client go itself."""

    async def _make_runner(self, **kwargs: Any) -> web.AppRunner:
        kwargs["handler_cancellation"] = False
        return web.AppRunner(self.app, **kwargs)


async def _serve(job: ExportJob, then: Any) -> Any:
    runner = ExportRunner()

    async def handler(request: web.Request) -> web.StreamResponse:
        return await runner.respond(request, job, {"X-Test": "1"})

    app = web.Application()
    app.add_routes([web.get("/export", handler)])
    async with TestClient(_AgentLikeServer(app)) as client:
        return await then(client)


async def _status_json(client: TestClient[Any, Any]) -> tuple[int, dict[str, Any]]:
    r = await client.get("/export")
    return r.status, await r.json()


@pytest.mark.parametrize(("script", "status", "exit_code", "error"), [
    ("echo 'some warning' >&2; echo 'to: not after from' >&2; exit 2", 400, 2,
     "to: not after from"),
    ("echo 'format parquet needs pyarrow' >&2; exit 3", 501, 1,
     "format parquet needs pyarrow"),
    ("exit 7", 500, 1, "export failed: the export process exited with status 7"),
])
def test_a_child_that_fails_before_writing_gives_a_one_line_error(
        script: str, status: int, exit_code: int, error: str) -> None:
    got = asyncio.run(_serve(_fake(script), _status_json))
    assert got == (status, {"error": error, "exit_code": exit_code})


def test_a_child_cut_short_never_passes_for_a_whole_file() -> None:
    async def read(client: TestClient[Any, Any]) -> tuple[int, str, bytes]:
        r = await client.get("/export")
        return r.status, r.headers["Content-Type"], await r.read()

    whole = asyncio.run(_serve(_fake("printf 'a,b\\n1,2\\n'"), read))
    assert whole == (200, "text/csv; charset=utf-8", b"a,b\n1,2\n")
    cut = asyncio.run(_serve(_fake("printf 'a,b\\n1,'; exit 1"), read))
    assert cut[0] == 500 and cut[1].startswith("application/json")
    assert b"export failed: the export process exited with status 1" in cut[2]


def test_the_child_runs_below_the_agent_from_its_start() -> None:
    """The child reports its own nice value (/proc/self/stat, field 19) without setting it:
    the agent lowered it, before the child's own main() could (a Python child's start is
    ~90 ms of CPU)."""
    async def read(client: TestClient[Any, Any]) -> tuple[int, bytes]:
        r = await client.get("/export")
        return r.status, await r.read()

    status, body = asyncio.run(_serve(_fake("sleep 0.2; cat /proc/self/stat"), read))
    assert status == 200
    fields = body.decode().rsplit(")", 1)[1].split()  # after the command name
    assert int(fields[16]) == CHILD_NICE == 10  # stat's 19th field, nice
    assert os.getpriority(os.PRIO_PROCESS, 0) < CHILD_NICE  # the agent's own is untouched


def test_a_large_file_is_sent_whole_with_its_length_and_leaves_nothing(tmp_path: Path) -> None:
    """24 MiB, more than a socket takes at once: sendfile(2) resumes until all is sent."""
    line = "0123456789abcdef" * 4 + "\n"
    job = _FakeChild(tmp_path / "ledger.db", 0, 1, "csv", None, False, command=(
        sys.executable, "-c", f"import sys\nsys.stdout.write({line!r} * {24 * 2**20 // 65})"))

    async def read(client: TestClient[Any, Any]) -> tuple[int, int, bytes]:
        r = await client.get("/export")
        return r.status, int(r.headers["Content-Length"]), await r.read()

    status, length, body = asyncio.run(_serve(job, read))
    assert status == 200 and length == len(body) == len(line) * (24 * 2**20 // 65)
    assert body == line.encode() * (24 * 2**20 // 65)
    assert list(tmp_path.iterdir()) == []  # the file had no name: nothing to clean up


def _children_with(marker: str) -> list[psutil.Process]:
    out = []
    for p in psutil.Process().children(recursive=True):
        try:
            if marker in " ".join(p.cmdline()):
                out.append(p)
        except psutil.Error:
            continue
    return out


def test_a_client_that_goes_away_takes_its_child_with_it(
        caplog: pytest.LogCaptureFixture) -> None:
    marker = f"export-child-{uuid.uuid4().hex}"
    # A child that would work for a minute.
    job = _FakeChild(_FAKE_DB, 0, 1, "csv", None, False, command=(
        sys.executable, "-c", "import time; time.sleep(60)", marker))

    async def leave_early(client: TestClient[Any, Any]) -> tuple[int, int]:
        assert client.port is not None
        sock = await asyncio.to_thread(socket.create_connection, ("127.0.0.1", client.port))
        sock.sendall(b"GET /export HTTP/1.1\r\nHost: x\r\n\r\n")
        for _ in range(250):
            if _children_with(marker):
                break
            await asyncio.sleep(0.02)
        running = len(_children_with(marker))
        sock.close()  # the client goes away before the file is ready
        t0 = time.monotonic()
        while _children_with(marker) and time.monotonic() - t0 < 5:
            await asyncio.sleep(0.02)
        return running, len(_children_with(marker))

    # Killed while the agent runs on: it would have slept a minute.
    with caplog.at_level(logging.ERROR):
        assert asyncio.run(_serve(job, leave_early)) == (1, 0)
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR] == []
