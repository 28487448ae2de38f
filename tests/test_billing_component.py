"""LedgerComponent in a hand-built AgentContext: snapshots and final samples in, the
/api/v1/billing route out (served by a real aiohttp server on loopback)."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from agent.ledger.component import LedgerComponent
from agent.ledger.periods import NS
from tests.test_ledger_support import context, ident, snapshot, synth

T0 = 1_800_000_000


async def _scenario(state_dir: Path) -> dict[str, Any]:
    ctx = context(state_dir, {"period_seconds": 10, "grace_seconds": 0, "host_id": "h-9"})
    comp = LedgerComponent()
    await comp.start(ctx)
    a = ident("/a", 5)
    await comp.on_snapshot(snapshot([(a, synth("/a", 5, T0 + 1, cpu=100))], boot=comp.boot_id))
    await comp.on_snapshot(snapshot([(a, synth("/a", 5, T0 + 4, cpu=900))], boot=comp.boot_id))
    # The events component publishes the read at `populated 0`; the ledger listens.
    ctx.publish_final_sample(a, synth("/a", 5, T0 + 6, cpu=1000))
    assert comp.ledger is not None
    # Final samples are written by the ledger's own thread (the event loop never waits on the
    # ledger): wait until it has counted this one.
    for _ in range(500):
        fams = comp.metric_families(snapshot([]))
        if any(s.name == "container_agent_ledger_final_samples_total" and s.value == 1
               for f in fams for s in f.samples):
            break
        await asyncio.sleep(0.01)
    comp.ledger.close_due((T0 + 20) * NS)
    out: dict[str, Any] = {}
    fams = comp.metric_families(snapshot([]))
    out["metrics"] = {s.name: s.value for f in fams for s in f.samples}
    app = web.Application()
    app.add_routes(comp.routes())
    async with TestClient(TestServer(app)) as client:
        r = await client.get("/api/v1/billing", params={"from": str(T0), "to": str(T0 + 10)})
        out["rows"] = await r.json()
        r = await client.get("/api/v1/billing", params={"format": "csv", "group_by": "runtime"})
        out["csv"] = await r.text()
        r = await client.get("/api/v1/billing", params={"from": "tomorrow"})
        out["bad"] = (r.status, await r.json())
        r = await client.get("/api/v1/billing", params={"format": "xml"})
        out["badfmt"] = (r.status, await r.json())
    await comp.stop()
    return out


def test_component_feeds_the_ledger_and_serves_exports(tmp_path: Path) -> None:
    out = asyncio.run(_scenario(tmp_path))
    cpu = [r for r in out["rows"] if r["x_Meter"] == "cpu_usec"]
    assert [(r["ConsumedQuantity"], r["x_HostId"], r["x_SampleCount"]) for r in cpu] == [
        (900, "h-9", 3)]
    assert out["csv"].splitlines()[0].startswith("RecordId,x_SchemaVersion,x_GroupBy")
    assert ",runtime,runc,2027-01-15T08:00:00Z,2027-01-15T08:00:10Z,cpu_usec,900," in out["csv"]
    m = out["metrics"]
    assert m["container_agent_ledger_cycles_total"] == 2
    assert m["container_agent_ledger_final_samples_total"] == 1
    assert m["container_agent_ledger_closed_before_seconds"] == T0 + 20
    status, body = out["bad"]
    assert status == 400 and body["exit_code"] == 2 and "'tomorrow' is not a time" in body["error"]
    assert out["badfmt"][0] == 400 and "xml" in json.dumps(out["badfmt"][1])
