"""Network counters per workload, as the network component leaves them in a snapshot."""

from __future__ import annotations

from collections.abc import Mapping

from agent.model.snapshot import Snapshot


def network_totals(snapshot: Snapshot) -> Mapping[str, tuple[int, int]]:
    """Workload id -> cumulative (rx, tx) bytes from the network component, if it ran."""
    net = snapshot.extras.get("network")
    totals = getattr(net, "totals_by_workload", None)
    if not isinstance(totals, Mapping):
        return {}
    out: dict[str, tuple[int, int]] = {}
    for wid, value in totals.items():
        pair = _pair(value)
        if pair is not None:
            out[str(wid)] = pair
    return out


def netns_of(snapshot: Snapshot) -> Mapping[str, int]:
    found = getattr(snapshot.extras.get("network"), "netns_by_workload", None)
    return found if isinstance(found, Mapping) else {}


def _pair(value: object) -> tuple[int, int] | None:
    if isinstance(value, tuple | list) and len(value) == 2:
        rx, tx = value
    else:
        rx, tx = getattr(value, "rx_bytes", None), getattr(value, "tx_bytes", None)
    if isinstance(rx, int) and isinstance(tx, int):
        return rx, tx
    return None

