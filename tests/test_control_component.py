"""ControlComponent in process: its routes on a real Unix socket, its events, its settings."""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Iterator, Mapping
from pathlib import Path
from types import MappingProxyType
from typing import Any

import pytest
from aiohttp import web

from agent.cli.client import AgentClient, CliError
from agent.control.component import ControlComponent
from agent.core.component import AgentContext
from agent.core.config import ConfigError, load_config
from agent.core.store import Store
from agent.model.snapshot import WorkloadIdentity
from collectors.layout import detect_layout
from tests.conftest import IS_ROOT
from tests.support import counter
from tests.support.cgroups import CgroupFactory

Recorded = list[tuple[str, WorkloadIdentity | None, str, dict[str, object]]]


class Served:
    """The component's control routes served on a Unix socket by a loop in a thread."""

    def __init__(self, tmp: Path, section: Mapping[str, Any]) -> None:
        self.events: Recorded = []
        self.socket = tmp / "ctl.sock"
        self.component = ControlComponent()
        self.loop = asyncio.new_event_loop()
        self.ctx = AgentContext(
            config=MappingProxyType({"control": MappingProxyType(dict(section))}),
            state_dir=tmp / "state", layout=detect_layout(), store=Store(tmp / "agent.db"),
            emit=lambda t, who, sev, f: self.events.append((t, who, sev, dict(f))),
        )
        self._ready = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()
        assert self._ready.wait(60)

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)

        async def setup() -> web.AppRunner:
            await self.component.start(self.ctx)
            app = web.Application()
            app.add_routes(self.component.control_routes())
            runner = web.AppRunner(app)
            await runner.setup()
            await web.UnixSite(runner, str(self.socket)).start()
            return runner

        self.runner = self.loop.run_until_complete(setup())
        self._ready.set()
        self.loop.run_forever()

    def close(self) -> None:
        asyncio.run_coroutine_threadsafe(self.runner.cleanup(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()
        self.ctx.store.close()


@pytest.fixture
def served(tmp_path: Path) -> Iterator[Served]:
    if not IS_ROOT:
        pytest.skip("needs root")
    s = Served(tmp_path, {"freeze_timeout": 5})
    try:
        yield s
    finally:
        s.close()


def _op(client: AgentClient, op: str, body: dict[str, Any]) -> list[dict[str, Any]]:
    return [json.loads(x) for x in client.stream_lines("POST", f"/api/v1/control/{op}",
                                                       body=body)]


def test_every_operation_is_an_event_with_duration_and_outcome(
    served: Served, cgroups: CgroupFactory, tmp_path: Path
) -> None:
    cg = cgroups.create()
    counter.start_in(cg, tmp_path / "count")
    client = AgentClient(served.socket)
    for op, freezer in (("freeze", "v2"), ("thaw", None), ("freeze", "v1"), ("thaw", None)):
        body: dict[str, Any] = {"target": cg.rel}
        if freezer:
            body["freezer"] = freezer
        lines = _op(client, op, body)
        assert lines[-1]["exit_code"] == 0 and "progress" in lines[0]
    lines = _op(client, "kill", {"target": cg.rel})
    assert lines[-1]["result"]["method"] in ("cgroup.kill", "signal")
    types = [e[0] for e in served.events]
    assert types == ["frozen", "thawed", "frozen", "thawed", "killed"]
    for etype, _who, severity, fields in served.events:
        assert fields["outcome"] == "ok" and fields["cgroup"] == cg.rel
        assert isinstance(fields["duration_s"], float) and fields["duration_s"] >= 0
        assert severity == ("warning" if etype == "killed" else "info")
    assert [e[3].get("freezer") for e in served.events[:4:2]] == ["v2", "v1"]


def test_failures_stream_an_error_line_and_an_event(
    served: Served, cgroups: CgroupFactory
) -> None:
    client = AgentClient(served.socket)
    lines = _op(client, "freeze", {"target": "/"})
    assert lines[-1]["exit_code"] == 6 and "root cgroup" in lines[-1]["error"]
    assert served.events[-1][0] == "frozen" and served.events[-1][3]["outcome"] == "refused"
    # Bad requests are answered before any stream, with no event.
    n = len(served.events)
    for body, code in (({"target": "/a/../b"}, 2), ({"target": 5}, 2), ({}, 2),
                       ({"target": "/x", "timeout": -1}, 2), ({"target": "/nope-x"}, 5),
                       ({"target": "/x", "freezer": "v3"}, 2)):
        with pytest.raises(CliError) as err:
            _op(client, "freeze", body)
        assert err.value.exit_code == code, (body, err.value)
    with pytest.raises(CliError) as err:
        _op(client, "explode", {"target": "/"})
    assert err.value.exit_code == 2
    assert len(served.events) == n
    assert client.get("/api/v1/checkpoints")["checkpoints"] == []
    with pytest.raises(CliError) as err:
        client.delete("/api/v1/checkpoints/nope")
    assert err.value.exit_code == 5


def test_host_fact_and_settings(served: Served) -> None:
    fact = served.ctx.host_facts["criu"]
    assert isinstance(fact, dict) and set(fact) == {"available", "path", "version", "error"}
    comp = ControlComponent()
    cfg = load_config(None, [comp])
    assert cfg["control"]["freeze_timeout"] == 10 and "init.scope" in cfg["control"]["protected"]
    bad = Path(served.socket.parent / "bad.toml")
    for text in ('[control]\nfreezer = "v3"\n', "[control]\nfreeze_timeout = 0\n",
                 "[control]\nprotected = [1]\n", "[control]\nnope = 1\n"):
        bad.write_text(text)
        with pytest.raises(ConfigError):
            load_config(bad, [comp])
