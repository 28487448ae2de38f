"""The components an agentd runs, in start order.

Each entry is "module:Class". A capability whose module is not in this tree yet is skipped, so
capabilities can land one at a time.
"""

from __future__ import annotations

import importlib
import importlib.util

from agent.core.component import Component

BUILTIN = (
    "agent.identity.component:IdentityComponent",
    "agent.network.component:NetworkComponent",
    "agent.events.component:EventsComponent",
    "agent.control.component:ControlComponent",
    "agent.ledger.component:LedgerComponent",
    "agent.exporters.remote_write:RemoteWriteComponent",
    "agent.exporters.otlp:OtlpComponent",
    "agent.web.component:WebComponent",
)


def builtin_components() -> list[Component]:
    out: list[Component] = []
    for entry in BUILTIN:
        module, cls = entry.split(":")
        if importlib.util.find_spec(module.rsplit(".", 1)[0]) is None:
            continue
        try:
            if importlib.util.find_spec(module) is None:
                continue
        except ModuleNotFoundError:
            continue
        component = getattr(importlib.import_module(module), cls)()
        assert isinstance(component, Component)
        out.append(component)
    return out
