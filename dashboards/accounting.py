"""Accounting: CPU core-hours, memory GiB-hours, IO and network bytes over the dashboard's time
range, per container, pod or namespace (the Group by variable)."""

from __future__ import annotations

from grafanalib.core import Dashboard, Template

from dashboards.common import (
    RANGE,
    bars,
    dashboard,
    increase,
    instance_var,
    kind_var,
    m,
    rate,
    sel,
    table,
    timeseries,
)

UID = "container-agent-accounting"
W = sel(kind=True)
G = "$group"
GIB = 1024**3

CPU_HOURS = f"sum by ({G}) ({increase('cpu_usage_seconds_total', W, RANGE)}) / 3600"
# Average usage over the range times its length: byte-hours, then GiB-hours.
GIB_HOURS = (
    f"sum by ({G}) ({rate('memory_usage_bytes', W, RANGE, 'avg_over_time')}) "
    f"* $__range_s / 3600 / {GIB}"
)


def _bytes(metric: str) -> str:
    return f"sum by ({G}) ({increase(metric, W, RANGE)})"


def group_var() -> Template:
    return Template(
        name="group",
        label="Group by",
        query="name,pod,namespace",
        type="custom",
        default="name",
    )


def build() -> Dashboard:
    summary = [
        table(
            "Usage over the time range",
            [
                (CPU_HOURS, "CPU core-hours", "none"),
                (GIB_HOURS, "Memory GiB-hours", "none"),
                (_bytes("io_read_bytes_total"), "IO read", "bytes"),
                (_bytes("io_write_bytes_total"), "IO written", "bytes"),
                (_bytes("network_workload_receive_bytes_total"), "Net received", "bytes"),
                (_bytes("network_workload_transmit_bytes_total"), "Net sent", "bytes"),
            ],
            "Totals per group over the selected range (Prometheus counters; for invoices use "
            "the agent's ledger: `agentctl billing`)",
        )
    ]
    ranked = [
        bars("CPU core-hours", CPU_HOURS, f"{{{{{G}}}}}", "none"),
        bars("Memory GiB-hours", GIB_HOURS, f"{{{{{G}}}}}", "none"),
    ]
    ranked_bytes = [
        bars(
            "Block IO bytes (read + write)",
            f"{_bytes('io_read_bytes_total')} + {_bytes('io_write_bytes_total')}",
            f"{{{{{G}}}}}",
            "bytes",
        ),
        bars(
            "Network bytes (receive + transmit)",
            f"{_bytes('network_workload_receive_bytes_total')} + "
            f"{_bytes('network_workload_transmit_bytes_total')}",
            f"{{{{{G}}}}}",
            "bytes",
        ),
    ]
    over_time = [
        timeseries(
            "CPU cores by group",
            [(f"sum by ({G}) ({rate('cpu_usage_seconds_total', W)})", f"{{{{{G}}}}}")],
            "none",
            stacking={"mode": "normal", "group": "A"},
            fillOpacity=20,
        ),
        timeseries(
            "Memory by group",
            [(f"sum by ({G}) ({m('memory_usage_bytes', W)})", f"{{{{{G}}}}}")],
            "bytes",
            stacking={"mode": "normal", "group": "A"},
            fillOpacity=20,
        ),
    ]
    return dashboard(
        UID,
        "Container agent: accounting",
        "Resource use per container, pod or namespace over the selected time range.",
        [instance_var(), kind_var(), group_var()],
        [(10, summary), (10, ranked), (10, ranked_bytes), (9, over_time)],
        [],
        time_from="now-24h",
    )
