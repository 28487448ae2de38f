"""agent.exporters.family_text renders families byte for byte as prometheus_client does, in
both formats: generated families of every type, hostile label values and help texts, and the
families a real agentd exports."""

from __future__ import annotations

from collections.abc import Iterable

from hypothesis import given, settings
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry
from prometheus_client import exposition as text_format
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    InfoMetricFamily,
    SummaryMetricFamily,
)
from prometheus_client.metrics_core import Metric
from prometheus_client.openmetrics import exposition as om_format
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Exemplar

from agent.exporters.family_text import render_families
from tests.conftest import needs_root
from tests.support.agentd import running_agent


class _Families:
    def __init__(self, families: Iterable[Metric]) -> None:
        self.families = list(families)

    def collect(self) -> Iterable[Metric]:
        return self.families


def reference(families: list[Metric], openmetrics: bool) -> bytes:
    reg = CollectorRegistry(auto_describe=False)
    reg.register(_Families(families))
    if openmetrics:
        return bytes(om_format.generate_latest(reg)).removesuffix(b"# EOF\n")  # type: ignore[no-untyped-call]
    return bytes(text_format.generate_latest(reg))


def assert_same(families: list[Metric]) -> None:
    for om in (False, True):
        assert render_families(families, om) == reference(families, om), f"openmetrics={om}"


values = st.one_of(st.floats(allow_nan=True, allow_infinity=True), st.integers(-2**60, 2**60))
texts = st.text(st.characters(blacklist_categories=("Cs",)), max_size=12)


@settings(max_examples=200, deadline=None)
@given(doc=texts, label=texts, value=values, created=st.one_of(st.none(), values))
def test_generated_families_of_every_type(doc: str, label: str, value: float,
                                          created: float | None) -> None:
    counter = CounterMetricFamily("ca_things_total", doc, labels=["who", "a_b"])
    counter.add_metric([label, "x"], value, created=created)
    gauge = GaugeMetricFamily("ca_level_bytes", doc, labels=["who"], unit="bytes")
    gauge.add_metric([label], value, timestamp=1.5)
    hist = HistogramMetricFamily("ca_wait_seconds", doc, labels=["route"])
    hist.add_metric([label], [("0.005", 1), ("1e-05", 2), ("+Inf", 3)], sum_value=value)
    summary = SummaryMetricFamily("ca_size", doc, count_value=3, sum_value=value)
    info = InfoMetricFamily("ca_build", doc)
    info.add_metric([], {"version": label, "zz": "1"})
    assert_same([counter, gauge, hist, summary, info, GaugeMetricFamily("ca_empty", doc)])


def test_families_prometheus_client_alone_renders_are_handed_to_it() -> None:
    """A ':' in a name, a label name outside the legacy set, an exemplar: each family rendered
    by prometheus_client, the others still by us, in order."""
    colon = GaugeMetricFamily("ca:rule", "recorded", value=1)
    odd_label = GaugeMetricFamily("ca_odd", "label", labels=["ünï"])
    odd_label.add_metric(["v"], 2)
    ex = CounterMetricFamily("ca_ex", "with exemplar", labels=["a"])
    ex.add_metric(["b"], 3, exemplar=Exemplar({"trace": "t1"}, 1.0))
    plain = GaugeMetricFamily("ca_plain", "plain", value=4)
    assert_same([plain, colon, odd_label, ex, plain])


@needs_root
def test_a_real_agents_families() -> None:
    """Every family a real agentd exports (cAdvisor names on), parsed back, renders the same."""
    with running_agent({"cadvisor": True}) as agent:
        agent.wait_for(lambda: int(agent.get("/healthz")["snapshot_seq"]) >= 1, timeout=20)
        text = agent.get_text("/metrics")
    families = list(text_string_to_metric_families(text))
    assert len(families) > 80
    assert_same(families)
