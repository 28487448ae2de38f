"""Events: the agent's event counters over time, and the same events as annotations.

Annotations come from counters (a marker wherever a counter rose in the step), so they work
with any Prometheus and no extra Grafana plugin: agent events by type, memory.events per
workload (high, max, oom, oom_kill) and freeze/thaw changes.
"""

from __future__ import annotations

from typing import Any

from grafanalib.core import Dashboard

from dashboards.common import (
    RATE,
    dashboard,
    increase,
    instance_var,
    kind_var,
    m,
    prom_annotation,
    rate,
    sel,
    timeseries,
)

UID = "container-agent-events"


def event_annotations(container: bool = False) -> list[dict[str, Any]]:
    """Annotations for a dashboard; `container` restricts them to $container."""
    w = sel(kind=True, container=container)
    limit_events = sel('event=~"max|oom|oom_kill"', kind=True, container=container)
    out = [
        prom_annotation(
            "Agent events",
            f"sum by (instance, type) ({increase('events_total', sel(), '$__interval')}) > 0",
            "{{type}}",
            "instance,type",
            "orange",
        ),
        prom_annotation(
            "Memory limit events",
            f"sum by (instance, name, event) "
            f"({increase('memory_events_total', limit_events, '$__interval')}) > 0",
            "{{event}}: {{name}}",
            "instance,name,event",
            "red",
        ),
        prom_annotation(
            "Freeze / thaw",
            f"{rate('frozen', w, '$__interval', 'changes')} > 0",
            "frozen state changed: {{name}}",
            "instance,name",
            "blue",
        ),
    ]
    return out


def build() -> Dashboard:
    rates = [
        timeseries(
            "Agent events by type",
            [(f"sum by (type) ({increase('events_total', sel(), RATE)})", "{{type}}")],
            "none",
            "Events recorded by the agent (start, stop, oom_kill, freeze, checkpoint, ...)",
            drawStyle="bars",
        ),
        timeseries(
            "Memory events by workload",
            [(
                f"sum by (name, event) "
                f"({increase('memory_events_total', sel(kind=True), RATE)})",
                "{{name}} {{event}}",
            )],
            "none",
            "memory.events counters: high (throttled), max (limit hit), oom, oom_kill",
            drawStyle="bars",
        ),
    ]
    state = [
        timeseries(
            "Frozen workloads",
            [(f"sum by (name) ({m('frozen', sel(kind=True))})", "{{name}}")],
            "none",
        ),
        timeseries(
            "Tracked workloads",
            [(f"sum by (kind) ({m('workloads', sel())})", "{{kind}}")],
            "none",
            "A change is a workload appearing or going away",
        ),
    ]
    return dashboard(
        UID,
        "Container agent: events",
        "Agent events over time; the same events are annotations on every dashboard.",
        [instance_var(), kind_var()],
        [(9, rates), (8, state)],
        event_annotations(),
    )
