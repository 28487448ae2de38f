"""Period placement and exact integer splitting of deltas across period boundaries."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from agent.ledger.periods import NS, period_of, split

HOUR = 3600


def test_period_of_is_utc_hour_start() -> None:
    # 2026-11-23T19:59:59.999999999Z and 20:00:00Z
    t = 1795464000 * NS  # 2026-11-23T20:00:00Z is a multiple of 3600
    assert t // NS % HOUR == 0
    assert period_of(t - 1, HOUR) == 1795464000 - HOUR
    assert period_of(t, HOUR) == 1795464000


def test_split_in_proportion_to_time() -> None:
    # 10 s stretch, 2.5 s before the boundary: a quarter of 1000 goes to the first period.
    b = 1795464000 * NS
    parts = split(1000, b - int(2.5 * NS), b + int(7.5 * NS), HOUR)
    assert parts == [(1795464000 - HOUR, 250), (1795464000, 750)]


def test_zero_length_stretch_goes_to_period_of_the_sample() -> None:
    b = 1795464000 * NS
    assert split(77, b, b, HOUR) == [(1795464000, 77)]


@given(
    delta=st.integers(min_value=0, max_value=10**15),
    t0=st.integers(min_value=0, max_value=10**19),
    length_ns=st.integers(min_value=0, max_value=10**12),
    period=st.sampled_from([1, 2, 7, 60, 3600, 86400]),
)
def test_parts_sum_exactly_and_stay_proportional(
    delta: int, t0: int, length_ns: int, period: int
) -> None:
    t1 = t0 + length_ns
    parts = split(delta, t0, t1, period)
    assert sum(p for _, p in parts) == delta
    starts = [s for s, _ in parts]
    assert starts == sorted(set(starts))
    assert all(s % period == 0 for s in starts)
    assert all(p >= 0 for _, p in parts)
    if length_ns > 0:
        assert starts[0] == period_of(t0, period)
        assert starts[-1] == period_of(t1 - 1, period)
        for s, p in parts:
            overlap = min((s + period) * NS, t1) - max(s * NS, t0)
            # Each part is within one unit of its exact proportional share.
            assert abs(p * length_ns - delta * overlap) <= length_ns
