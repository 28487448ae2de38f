"""Per-second rates from two samples of the same incarnation.

Never across a recreation (different inode) or a counter reset (a counter that went down):
such a pair gives None for that rate rather than a wrong number.
"""

from __future__ import annotations

from agent.model.snapshot import Rates
from collectors.samples import CgroupSample


def _per_s(old: int | None, new: int | None, seconds: float, scale: float = 1.0) -> float | None:
    if old is None or new is None or new < old or seconds <= 0:
        return None
    return (new - old) / scale / seconds


def compute_rates(
    prev: CgroupSample | None,
    cur: CgroupSample,
    prev_net: tuple[int, int] | None = None,
    cur_net: tuple[int, int] | None = None,
) -> Rates | None:
    if prev is None or prev.inode != cur.inode or prev.vanished or cur.vanished:
        return None
    seconds = (cur.monotonic_ns - prev.monotonic_ns) / 1e9
    if seconds <= 0:
        return None
    if cur.same_values(prev) and prev_net == cur_net:
        return _still(cur, cur_net)
    cpu_cores = user = system = throttled = None
    if prev.cpu is not None and cur.cpu is not None:
        cpu_cores = _per_s(prev.cpu.usage_usec, cur.cpu.usage_usec, seconds, 1e6)
        user = _per_s(prev.cpu.user_usec, cur.cpu.user_usec, seconds, 1e6)
        system = _per_s(prev.cpu.system_usec, cur.cpu.system_usec, seconds, 1e6)
        periods = _per_s(prev.cpu.nr_periods, cur.cpu.nr_periods, seconds)
        thr = _per_s(prev.cpu.nr_throttled, cur.cpu.nr_throttled, seconds)
        if periods and thr is not None:
            throttled = thr / periods
    io: list[float | None] = [None, None, None, None]
    p_io, c_io = prev.io_totals, cur.io_totals
    if p_io is not None and c_io is not None:
        io = [_per_s(a, b, seconds) for a, b in zip(p_io, c_io, strict=True)]
    rx = tx = None
    if prev_net is not None and cur_net is not None:
        rx = _per_s(prev_net[0], cur_net[0], seconds)
        tx = _per_s(prev_net[1], cur_net[1], seconds)
    return Rates(
        cpu_cores=cpu_cores,
        cpu_user_cores=user,
        cpu_system_cores=system,
        cpu_throttled_share=throttled,
        io_read_bytes_per_s=io[0],
        io_write_bytes_per_s=io[1],
        io_read_ops_per_s=io[2],
        io_write_ops_per_s=io[3],
        net_rx_bytes_per_s=rx,
        net_tx_bytes_per_s=tx,
    )


def _still(cur: CgroupSample, net: tuple[int, int] | None) -> Rates:
    """compute_rates of two samples with the same values: 0 where both have a value (one
    shared object per shape: an idle cgroup's rates cost nothing to build)."""
    cpu = cur.cpu
    shape = (cpu is not None and cpu.usage_usec is not None,
             cpu is not None and cpu.user_usec is not None,
             cpu is not None and cpu.system_usec is not None, cur.io is not None, net is not None)
    rates = _STILL.get(shape)
    if rates is None:
        zero = [0.0 if known else None for known in shape]
        rates = _STILL[shape] = Rates(
            cpu_cores=zero[0], cpu_user_cores=zero[1], cpu_system_cores=zero[2],
            io_read_bytes_per_s=zero[3], io_write_bytes_per_s=zero[3],
            io_read_ops_per_s=zero[3], io_write_ops_per_s=zero[3],
            net_rx_bytes_per_s=zero[4], net_tx_bytes_per_s=zero[4],
        )
    return rates


_STILL: dict[tuple[bool, ...], Rates] = {}
