"""The benchmarks' quantile: nearest rank, no interpolation, so a printed p99 is an answer that
was measured (of 2,400, the 24th-worst)."""

from __future__ import annotations

from collections.abc import Sequence


def quantile(values: Sequence[float], q: float) -> float:
    """The value at rank int(q * n) of `values` sorted (not empty)."""
    v = sorted(values)
    return v[min(len(v) - 1, int(q * len(v)))]
