"""The final-read latency is exported as a histogram and, exactly, as recent quantiles."""

from __future__ import annotations

import threading
from collections.abc import Iterable

import pytest
from prometheus_client.core import GaugeMetricFamily

from agent.kernel.final_read import LatencyHistogram, latency_family, recent_latency_family


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
    for ms in range(1, 101):
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
    assert hist.count == 101
    monkeypatch.undo()
    assert hist.quantiles((0.5, 0.99)) == [0.051, 0.1]
