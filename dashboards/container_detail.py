"""Container detail, templated by container: CPU with throttling, memory with working set and
limits, IO per device, PIDs, pressure, network per interface."""

from __future__ import annotations

from grafanalib.core import Dashboard

from dashboards.common import (
    PSI_LEVEL,
    RATE,
    container_var,
    dashboard,
    increase,
    instance_var,
    kind_var,
    m,
    rate,
    sel,
    timeseries,
)
from dashboards.events import event_annotations

UID = "container-agent-container"
C = sel(kind=True, container=True)
LIMITS = sel('limit=~"max|high"', kind=True, container=True)
# Interface series carry the namespace owner's id/name (scope="container"), not the kind.
NET = sel('scope="container"', container=True)
STATS = sel('stat=~"anon|file|kernel|shmem|sock|slab|pagetables"', kind=True, container=True)


def _psi(level: str) -> str:
    # PSI's some/full label has the workload kind's name: it cannot filter on both.
    if PSI_LEVEL == "kind":
        return sel(f'{PSI_LEVEL}="{level}"', container=True)
    return sel(f'{PSI_LEVEL}="{level}"', kind=True, container=True)


def build() -> Dashboard:
    cpu = [
        timeseries(
            "CPU",
            [
                (f"sum by (name) ({rate('cpu_usage_seconds_total', C)})", "used"),
                (f"sum by (name) ({rate('cpu_user_seconds_total', C)})", "user"),
                (f"sum by (name) ({rate('cpu_system_seconds_total', C)})", "system"),
                (f"max by (name) ({m('cpu_quota_cores', C)})", "limit (cpu.max)"),
            ],
            "none",
            "CPU cores used, and the cpu.max limit in cores when one is set",
        ),
        timeseries(
            "CPU throttling",
            [
                (
                    f"sum by (name) ({rate('cpu_throttled_periods_total', C)}) / "
                    f"sum by (name) ({rate('cpu_periods_total', C)})",
                    "throttled periods",
                ),
                (f"sum by (name) ({rate('cpu_throttled_seconds_total', C)})", "throttled time"),
            ],
            "percentunit",
            "Share of enforcement periods throttled, and seconds throttled per second",
        ),
    ]
    memory = [
        timeseries(
            "Memory",
            [
                (f"sum by (name) ({m('memory_usage_bytes', C)})", "usage"),
                (f"sum by (name) ({m('memory_working_set_bytes', C)})", "working set"),
                (f"max by (name) ({m('memory_peak_bytes', C)})", "peak"),
                (f"sum by (name) ({m('memory_swap_bytes', C)})", "swap"),
                (f"max by (name, limit) ({m('memory_limit_bytes', LIMITS)})", "limit {{limit}}"),
            ],
            "bytes",
            "Usage, working set (usage minus inactive file), peak, swap and the max/high limits",
        ),
        timeseries(
            "Memory by type",
            [(
                f"sum by (stat) ({m('memory_stat_bytes', STATS)})",
                "{{stat}}",
            )],
            "bytes",
            "memory.stat breakdown",
            stacking={"mode": "normal", "group": "A"},
            fillOpacity=30,
        ),
        timeseries(
            "Memory faults and events",
            [
                (f"sum by (type) ({rate('memory_faults_total', C)})", "{{type}} faults/s"),
                (f"sum by (event) ({increase('memory_events_total', C, RATE)})", "{{event}}"),
            ],
            "none",
        ),
    ]
    io = [
        timeseries(
            "Block IO bytes per device",
            [
                (f"sum by (device) ({rate('io_read_bytes_total', C)})", "read {{device}}"),
                (f"sum by (device) ({rate('io_write_bytes_total', C)})", "write {{device}}"),
            ],
            "Bps",
        ),
        timeseries(
            "Block IO operations per device",
            [
                (f"sum by (device) ({rate('io_reads_total', C)})", "reads {{device}}"),
                (f"sum by (device) ({rate('io_writes_total', C)})", "writes {{device}}"),
            ],
            "iops",
        ),
    ]
    tasks = [
        timeseries(
            "PIDs",
            [
                (f"sum by (name) ({m('pids_current', C)})", "tasks"),
                (f"max by (name) ({m('pids_limit', C)})", "limit (pids.max)"),
            ],
            "none",
        ),
        timeseries(
            "Pressure (PSI)",
            [
                (f"sum by (resource) ({rate('pressure_stalled_seconds_total', _psi('some'))})",
                 "some {{resource}}"),
                (f"sum by (resource) ({rate('pressure_stalled_seconds_total', _psi('full'))})",
                 "full {{resource}}"),
            ],
            "percentunit",
            "Share of time some (or all) tasks stalled waiting for CPU, memory or IO",
        ),
    ]
    network = [
        timeseries(
            "Network receive per interface",
            [(f"sum by (interface) ({rate('network_receive_bytes_total', NET)})", "{{interface}}")],
            "Bps",
        ),
        timeseries(
            "Network transmit per interface",
            [(
                f"sum by (interface) ({rate('network_transmit_bytes_total', NET)})",
                "{{interface}}",
            )],
            "Bps",
        ),
        timeseries(
            "State",
            [
                (f"max by (name) ({m('frozen', C)})", "frozen"),
                (f"max by (name) ({m('populated', C)})", "populated"),
            ],
            "none",
            "1 = frozen / has processes",
        ),
    ]
    return dashboard(
        UID,
        "Container agent: container detail",
        "One workload in depth; pick it with the Container variable.",
        [instance_var(), kind_var(), container_var()],
        [(9, cpu), (9, memory), (8, io), (8, tasks), (8, network)],
        event_annotations(container=True),
        time_from="now-1h",
    )
