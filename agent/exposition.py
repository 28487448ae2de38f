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
from agent.metrics import snapshot_families
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
    reg = CollectorRegistry(auto_describe=False)
    reg.register(_Families(families))
    if openmetrics:
        return bytes(om_format.generate_latest(reg))  # type: ignore[no-untyped-call]
    return bytes(text_format.generate_latest(reg))


def wants_openmetrics(accept: str) -> bool:
    return "application/openmetrics-text" in accept


class MetricsRenderer:
    """Caches the rendering of the current snapshot in both formats."""

    def __init__(self, cadvisor: bool) -> None:
        self.cadvisor = cadvisor
        self._lock = threading.Lock()
        self._snapshot: Snapshot | None = None
        self._cache: dict[bool, bytes] = {}
        self._process = CollectorRegistry(auto_describe=False)
        ProcessCollector(registry=self._process, namespace="container_agent")

    def prepare(self, snapshot: Snapshot) -> None:
        """Render `snapshot` (call from the collection thread, before publishing it)."""
        families = snapshot_families(snapshot)
        if self.cadvisor:
            families.extend(cadvisor_families(snapshot))
        cache = {False: _render(families, False), True: _render(families, True)}
        with self._lock:
            self._snapshot = snapshot
            self._cache = cache

    def scrape(
        self, snapshot: Snapshot, openmetrics: bool, live: Callable[[Snapshot], list[Metric]]
    ) -> bytes:
        with self._lock:
            cached = self._cache.get(openmetrics) if self._snapshot is snapshot else None
        if cached is None:
            # A snapshot amended between cycles (new workload): render it now.
            self.prepare(snapshot)
            with self._lock:
                cached = self._cache[openmetrics]
        extra = live(snapshot)
        extra.extend(self._process.collect())
        tail = _render(extra, openmetrics)
        if openmetrics:
            return cached[: -len(_EOF)] + tail if cached.endswith(_EOF) else cached + tail
        return cached + tail
