"""Host overview: totals, then the top containers by CPU, memory, IO, network and pressure."""

from __future__ import annotations

from grafanalib.core import Dashboard

from dashboards.common import (
    PSI_LEVEL,
    RATE,
    dashboard,
    increase,
    instance_var,
    kind_var,
    m,
    rate,
    sel,
    stat,
    timeseries,
)
from dashboards.events import event_annotations

UID = "container-agent-host"
W = sel(kind=True)  # workloads of the chosen kinds on the chosen hosts


def both(first: str, second: str, by: str = "") -> str:
    """Sum of two counters' rates, per `by` labels (a rate over a __name__ regex would give two
    series with one label set once the name is dropped, which PromQL refuses)."""
    agg = f"sum by ({by}) " if by else "sum"
    return f"{agg}({rate(first, W)}) + {agg}({rate(second, W)})"


IO = ("io_read_bytes_total", "io_write_bytes_total")
# Per-workload totals (non-loopback interfaces; a shared namespace counts for its owner only).
NET = ("network_workload_receive_bytes_total", "network_workload_transmit_bytes_total")
#: PSI series share the `kind` label name with the workload kind (see common.PSI_LEVEL).
PSI_SOME = sel(f'{PSI_LEVEL}="some"', kind=PSI_LEVEL != "kind")


def build() -> Dashboard:
    totals = [
        stat("Workloads", f'sum({m("workloads", sel(kind=True))})', "none"),
        stat("CPU used", f"sum({rate('cpu_usage_seconds_total', W)})", "none",
             "CPU cores used by the selected workloads"),
        stat("Memory working set", f"sum({m('memory_working_set_bytes', W)})", "bytes"),
        stat("Block IO", both(*IO), "Bps", "Read + write bytes/s"),
        stat("Network", both(*NET), "Bps", "Receive + transmit bytes/s"),
        stat("Agent cycle CPU", f"max({m('cycle_cpu_seconds', sel())})", "s",
             "CPU time the agent's last collection cycle cost"),
    ]
    top = [
        timeseries(
            "Top 10 by CPU",
            [(f"topk(10, sum by (name, id) ({rate('cpu_usage_seconds_total', W)}))", "{{name}}")],
            "none",
            "CPU cores used",
        ),
        timeseries(
            "Top 10 by memory working set",
            [(f"topk(10, sum by (name, id) ({m('memory_working_set_bytes', W)}))", "{{name}}")],
            "bytes",
        ),
    ]
    top_io = [
        timeseries(
            "Top 10 by block IO (read + write)",
            [(f"topk(10, {both(*IO, by='name, id')})", "{{name}}")],
            "Bps",
        ),
        timeseries(
            "Top 10 by network (receive + transmit)",
            [(f"topk(10, {both(*NET, by='name, id')})", "{{name}}")],
            "Bps",
        ),
    ]
    pressure = [
        timeseries(
            "Top 10 by pressure (some tasks stalled)",
            [(
                f"topk(10, sum by (name, id, resource) "
                f"({rate('pressure_stalled_seconds_total', PSI_SOME)}))",
                "{{name}} {{resource}}",
            )],
            "percentunit",
            "Share of wall time in which some tasks of the workload waited for the resource",
        ),
        timeseries(
            "Memory pressure events (high, max, oom_kill)",
            [(
                f"sum by (name, id, event) ({increase('memory_events_total', W, RATE)})",
                "{{name}} {{event}}",
            )],
            "none",
        ),
    ]
    agent = [
        timeseries(
            "Agent: collection cycle CPU",
            [(m("cycle_cpu_seconds", sel()), "{{instance}}")],
            "s",
        ),
        timeseries(
            "Agent: tracked workloads",
            [(f"sum by (instance, kind) ({m('workloads', sel())})", "{{instance}} {{kind}}")],
            "none",
        ),
        timeseries(
            "Agent: remote write",
            [
                (f"rate({m('remote_write_sent_samples_total', sel())}[{RATE}])",
                 "sent {{instance}}"),
                (f"rate({m('remote_write_dropped_samples_total', sel())}[{RATE}])",
                 "dropped {{instance}}"),
            ],
            "none",
            "Samples per second pushed to (and dropped for) the remote-write receiver",
        ),
    ]
    return dashboard(
        UID,
        "Container agent: host overview",
        "Totals and top workloads per host, from container-agent's /metrics.",
        [instance_var(), kind_var()],
        [(4, totals), (9, top), (9, top_io), (9, pressure), (7, agent)],
        event_annotations(),
    )
