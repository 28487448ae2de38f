"""What the host's CPUs did while a benchmark ran, from /proc/stat's aggregate `cpu` line: busy,
idle, and stolen by the hypervisor. A latency figure taken while a virtual machine's host
steals a third of its CPU time is not comparable to one taken without (seen here: 15-45 %
steal for minutes, /metrics p50 2.7 -> 8.8 ms), so the benchmarks print it beside their
figures."""

from __future__ import annotations

from pathlib import Path

#: /proc/stat's cpu columns (proc(5)): user nice system idle iowait irq softirq steal ...
_IDLE, _IOWAIT, _STEAL = 3, 4, 7


def _ticks(stat: Path) -> list[int]:
    first = stat.read_text().split("\n", 1)[0].split()
    assert first[0] == "cpu", first
    return [int(x) for x in first[1:9]]


class HostCpu:
    """Started at construction; `summary()` tells the share of each kind since then."""

    def __init__(self, stat: Path = Path("/proc/stat")) -> None:
        self.stat = stat
        self._start = _ticks(stat)

    def shares(self) -> dict[str, float]:
        """Percent of all CPU time since the start: busy (user, system, irq), idle (with
        iowait) and steal (taken by the hypervisor)."""
        delta = [b - a for a, b in zip(self._start, _ticks(self.stat), strict=True)]
        total = sum(delta) or 1
        idle = delta[_IDLE] + delta[_IOWAIT]
        steal = delta[_STEAL]
        return {"busy": 100 * (total - idle - steal) / total, "idle": 100 * idle / total,
                "steal": 100 * steal / total}

    def summary(self) -> str:
        s = self.shares()
        return (f"host CPU: busy {s['busy']:.0f} %, idle {s['idle']:.0f} %, "
                f"stolen by the hypervisor {s['steal']:.1f} %")
