"""UTC periods `[start, end)` of a configurable length, and exact integer splitting.

Periods are aligned to the Unix epoch, so a length of 3600 gives UTC hours. A counter delta
over a stretch between two samples is split across the periods the stretch overlaps, in
proportion to time; the parts are integers that always sum to the delta exactly (cumulative
floor: part_i = floor(d*C_i/W) - floor(d*C_{i-1}/W), which telescopes to d).
"""

from __future__ import annotations

NS = 1_000_000_000


def period_of(t_ns: int, length_s: int) -> int:
    """Start (epoch seconds) of the period holding instant t_ns."""
    return (t_ns // NS) // length_s * length_s


def split(delta: int, t0_ns: int, t1_ns: int, length_s: int) -> list[tuple[int, int]]:
    """[(period_start_s, part)] for `delta` accrued evenly over [t0_ns, t1_ns).

    A zero or negative-length stretch puts everything in the period of t1_ns. Parts may be 0.
    """
    if t1_ns <= t0_ns:
        return [(period_of(t1_ns, length_s), delta)]
    step = length_s * NS
    total = t1_ns - t0_ns
    out: list[tuple[int, int]] = []
    start = (t0_ns // step) * step
    covered = 0
    given = 0
    while start < t1_ns:
        end = start + step
        covered += min(end, t1_ns) - max(start, t0_ns)
        upto = delta * covered // total
        out.append((start // NS, upto - given))
        given = upto
        start = end
    return out
