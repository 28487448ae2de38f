"""The current billing period's top consumers, for the web UI: the ledger's own per-container
group totals (the same numbers `agentctl billing export --group-by container --include-open`
gives for that period), pivoted to one entry per container and ranked by CPU."""

from __future__ import annotations

from typing import Any

from agent.ledger.export import build_groups
from agent.ledger.ledger import Ledger

#: Meters the page shows, in column order.
SHOWN = ("cpu_usec", "memory_byte_seconds", "memory_peak_bytes", "io_read_bytes",
         "io_write_bytes", "net_rx_bytes", "net_tx_bytes")


def top_consumers(ledger: Ledger, now_s: int, n: int) -> dict[str, Any]:
    start = now_s // ledger.period * ledger.period
    end = start + ledger.period
    rows = ledger.storage.rows(start, end, include_open=True)
    names: dict[str, tuple[str, str]] = {}
    for r in rows:
        key = str(r.identity.get("id") or r.cgroup)
        names[key] = (str(r.identity.get("name") or key), str(r.identity.get("kind") or ""))
    by_key: dict[str, dict[str, int]] = {}
    for g in build_groups(rows, "container"):
        if g["x_GroupKey"] == "/":
            continue  # the root cgroup is the whole host, not a consumer
        by_key.setdefault(g["x_GroupKey"], {})[g["x_Meter"]] = int(g["ConsumedQuantity"])
    ranked = sorted(by_key.items(), key=lambda kv: (-kv[1].get("cpu_usec", 0), kv[0]))
    top = [
        {"id": key, "name": names.get(key, (key, ""))[0], "kind": names.get(key, (key, ""))[1],
         **{m: meters.get(m, 0) for m in SHOWN}}
        for key, meters in ranked[:n]
    ]
    return {"period_start": start, "period_end": end, "meters": list(SHOWN), "top": top}
