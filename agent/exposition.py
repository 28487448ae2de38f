"""Rendering /metrics: the snapshot's families are rendered once per snapshot, in the
collection thread; a scrape only adds the components' (small, live) families.

Content negotiation: OpenMetrics when the client asks for it, Prometheus text otherwise.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterable

from prometheus_client import CollectorRegistry, ProcessCollector
from prometheus_client import exposition as text_format
from prometheus_client.metrics_core import Metric
from prometheus_client.openmetrics import exposition as om_format

from agent.cadvisor_compat import cadvisor_families
from agent.metrics import RenderedFamily, agent_families, render_workload_families
from agent.model import Snapshot

log = logging.getLogger("agent.metrics")

OPENMETRICS = om_format.CONTENT_TYPE_LATEST
TEXT = text_format.CONTENT_TYPE_LATEST
_EOF = b"# EOF\n"


class _Families:
    def __init__(self, families: Iterable[Metric]) -> None:
        self._families = list(families)

    def collect(self) -> Iterable[Metric]:
        return self._families


def _render(families: Iterable[Metric], openmetrics: bool) -> bytes:
    """prometheus_client's rendering, without OpenMetrics' `# EOF` (added once per scrape)."""
    reg = CollectorRegistry(auto_describe=False)
    reg.register(_Families(families))
    if openmetrics:
        body = bytes(om_format.generate_latest(reg))  # type: ignore[no-untyped-call]
        return body[: -len(_EOF)] if body.endswith(_EOF) else body
    return bytes(text_format.generate_latest(reg))


def wants_openmetrics(accept: str) -> bool:
    return "application/openmetrics-text" in accept


class MetricsRenderer:
    """Renders each cycle's snapshot once, in both formats; scrapes serve those bytes.

    A snapshot amended between cycles (a cgroup appeared) is not rendered again: /metrics
    shows the last collection cycle, the JSON API shows amendments at once.
    """

    def __init__(self, cadvisor: bool) -> None:
        self.cadvisor = cadvisor
        self._lock = threading.Lock()
        self._families: list[RenderedFamily] = []
        self._tails: dict[bool, bytes] = {}
        self._process = CollectorRegistry(auto_describe=False)
        ProcessCollector(registry=self._process, namespace="container_agent")

    def prepare(self, snapshot: Snapshot) -> None:
        """Render `snapshot` (call from the collection thread, before publishing it)."""
        others = agent_families(snapshot)
        if self.cadvisor:
            others.extend(cadvisor_families(snapshot))
        families = render_workload_families(snapshot)
        tails = {om: _render(others, om) for om in (False, True)}
        with self._lock:
            self._families = families
            self._tails = tails

    def scrape(
        self, snapshot: Snapshot, openmetrics: bool, live: Callable[[Snapshot], list[Metric]]
    ) -> bytes:
        with self._lock:
            families, tails = self._families, self._tails
        if not tails:
            self.prepare(snapshot)
            with self._lock:
                families, tails = self._families, self._tails
        extra = live(snapshot)
        extra.extend(self._process.collect())
        parts: list[bytes] = []
        for f in families:
            parts += (f.om_header if openmetrics else f.text_header, f.lines)
        parts += [tails[openmetrics], _render(extra, openmetrics), _EOF if openmetrics else b""]
        return b"".join(parts)
