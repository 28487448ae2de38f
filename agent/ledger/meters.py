"""The meters the ledger records: name, base unit, how it is measured, how it aggregates.

Every quantity is an integer in its base unit. `exact_counter` meters come from cumulative
kernel counters (deltas are exact); `sampled` meters come from gauges read each cycle.
Additive meters aggregate by sum (across rows, periods and correction revisions); peak meters
by max (a maximum cannot be summed).
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

#: A usage row's subject: the incarnation's own use, or (on a parent) the part of its CPU
#: that none of its tracked children account for.
SELF = "self"
UNATTRIBUTED = "unattributed"


class Method(StrEnum):
    EXACT_COUNTER = "exact_counter"
    SAMPLED = "sampled"


class Aggregation(StrEnum):
    SUM = "sum"
    MAX = "max"


@dataclass(frozen=True, slots=True)
class Meter:
    name: str
    unit: str
    method: Method
    aggregation: Aggregation
    help: str


CPU_USEC = "cpu_usec"
MEMORY_BYTE_SECONDS = "memory_byte_seconds"
MEMORY_PEAK_BYTES = "memory_peak_bytes"
IO_READ_BYTES = "io_read_bytes"
IO_WRITE_BYTES = "io_write_bytes"
IO_READ_OPS = "io_read_ops"
IO_WRITE_OPS = "io_write_ops"
NET_RX_BYTES = "net_rx_bytes"
NET_TX_BYTES = "net_tx_bytes"
PIDS_PEAK = "pids_peak"

_E, _S = Method.EXACT_COUNTER, Method.SAMPLED
_SUM, _MAX = Aggregation.SUM, Aggregation.MAX

METERS: dict[str, Meter] = {
    m.name: m
    for m in (
        Meter(CPU_USEC, "microsecond", _E, _SUM, "CPU time, cpu.stat usage_usec deltas"),
        Meter(MEMORY_BYTE_SECONDS, "byte-second", _S, _SUM,
              "memory.current integrated over time (trapezoid between samples)"),
        Meter(MEMORY_PEAK_BYTES, "byte", _S, _MAX,
              "highest memory.current sampled, or memory.peak when it rose in the period"),
        Meter(IO_READ_BYTES, "byte", _E, _SUM, "io.stat rbytes deltas, all devices"),
        Meter(IO_WRITE_BYTES, "byte", _E, _SUM, "io.stat wbytes deltas, all devices"),
        Meter(IO_READ_OPS, "operation", _E, _SUM, "io.stat rios deltas, all devices"),
        Meter(IO_WRITE_OPS, "operation", _E, _SUM, "io.stat wios deltas, all devices"),
        Meter(NET_RX_BYTES, "byte", _E, _SUM,
              "bytes received in the workload's network namespace (once per namespace)"),
        Meter(NET_TX_BYTES, "byte", _E, _SUM,
              "bytes sent from the workload's network namespace (once per namespace)"),
        Meter(PIDS_PEAK, "task", _S, _MAX,
              "highest pids.current sampled, or pids.peak when it rose in the period"),
    )
}

#: Cumulative counters, in the order the ledger reads them from a sample.
COUNTER_METERS = (CPU_USEC, IO_READ_BYTES, IO_WRITE_BYTES, IO_READ_OPS, IO_WRITE_OPS)
NET_METERS = (NET_RX_BYTES, NET_TX_BYTES)
PEAK_METERS = (MEMORY_PEAK_BYTES, PIDS_PEAK)


def meter(name: str) -> Meter:
    return METERS[name]
