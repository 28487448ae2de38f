"""The final-read latency is exported as a histogram and, exactly, as recent quantiles."""

from __future__ import annotations

import random
import threading
from collections.abc import Iterable

import pytest
from prometheus_client.core import GaugeMetricFamily

from agent.kernel.final_read import (
    _RECENT,
    LatencyHistogram,
    latency_family,
    recent_latency_family,
)


def _values(fam: GaugeMetricFamily) -> dict[str, float]:
    return {s.labels["quantile"]: s.value for s in fam.samples}


def test_recent_quantiles_are_the_observed_values() -> None:
    hist = LatencyHistogram()
    assert _values(recent_latency_family(hist)) == {}  # nothing read yet: no series
    for ms in range(100, 0, -1):  # 1..100 ms, in any order
        hist.observe(ms / 1000)
    assert _values(recent_latency_family(hist)) == {"0.5": 0.051, "0.9": 0.091, "0.99": 0.1}
    buckets = {s.labels["le"]: s.value for s in latency_family(hist).samples
               if s.name.endswith("_bucket")}
    assert buckets["0.01"] == 10 and buckets["0.1"] == 100 and buckets["+Inf"] == 100


def test_the_ring_keeps_the_latest_reads() -> None:
    hist = LatencyHistogram()
    for _ in range(5000):
        hist.observe(0.5)  # an old slow spell ...
    for _ in range(4000):
        hist.observe(0.001)  # ... then prompt reads: the recent quantiles show those
    assert _values(recent_latency_family(hist))["0.99"] == 0.001
    assert hist.count == 9000  # the histogram keeps everything


def test_a_scrapes_sort_never_holds_up_the_end_of_a_final_read(
        monkeypatch: pytest.MonkeyPatch) -> None:
    import agent.kernel.final_read as final_read

    hist = LatencyHistogram()
    # A full ring and one more: the older half is dropped, the next scrape sorts again.
    for ms in range(1, _RECENT + 2):
        hist.observe(ms / 1000)
    sorting, observed = threading.Event(), threading.Event()

    def slow_sorted(values: Iterable[float]) -> list[float]:
        sorting.set()
        observed.wait(5)  # a long sort: the final read's observe() must not wait for it
        return sorted(values)

    monkeypatch.setattr(final_read, "sorted", slow_sorted, raising=False)
    scrape = threading.Thread(target=lambda: hist.quantiles((0.5,)))
    scrape.start()
    assert sorting.wait(5)
    # The final-read thread's last step, during the scrape's sort: it must not wait.
    final = threading.Thread(target=hist.observe, args=(0.2,))
    final.start()
    final.join(2)
    held_up = final.is_alive()
    observed.set()
    final.join(5)
    assert not held_up
    scrape.join(5)
    assert hist.count == _RECENT + 2
    monkeypatch.undo()
    kept = sorted([ms / 1000 for ms in range(_RECENT // 2 + 2, _RECENT + 2)] + [0.2])
    assert hist.quantiles((0.5, 0.99)) == [kept[len(kept) // 2], kept[int(0.99 * len(kept))]]


def test_quantiles_are_those_of_the_ring_sorted_through_its_drops() -> None:
    """Kept sorted read by read and sorted again after each drop of the ring's older half:
    the quantiles are always those of the ring's values sorted now."""
    rng = random.Random(7)
    hist = LatencyHistogram()
    ring: list[float] = []
    qs = (0.0, 0.5, 0.9, 0.99, 1.0)
    for n in range(3 * _RECENT):
        value = rng.choice([rng.random(), 0.001 * rng.randint(1, 50)])
        hist.observe(value)
        if len(ring) >= _RECENT:
            del ring[: _RECENT // 2]
        ring.append(value)
        if n % 97 == 0 or len(ring) == _RECENT // 2 + 1:
            want = sorted(ring)
            assert hist.quantiles(qs) == [want[min(len(want) - 1, int(q * len(want)))]
                                          for q in qs]
