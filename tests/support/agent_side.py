"""Benchmarks' view of the agent's own timings, from a /metrics text: histograms as bucket
upper bounds (agent.api.timing, agent.kernel.final_read)."""

from __future__ import annotations

import re

FINAL_READ_BUCKETS = re.compile(
    r'^container_agent_final_read_latency_seconds_bucket\{le="([^"]+)"\} (\S+)$', re.M)


def latency_quantiles(metrics: str, pattern: re.Pattern[str] = FINAL_READ_BUCKETS) -> str:
    """p50 and p99 of the histogram `pattern` finds (le, cumulative count), as bounds."""
    buckets = [(float("inf") if le == "+Inf" else float(le), float(n))
               for le, n in pattern.findall(metrics)]
    if not buckets or buckets[-1][1] == 0:
        return "none yet"
    total = buckets[-1][1]

    def q(p: float) -> str:
        for le, n in buckets:
            if n >= p * total:
                return f"<= {le * 1e3:g} ms"
        return "?"
    return f"p50 {q(0.5)}, p99 {q(0.99)} (n={int(total)})"


def agent_side(metrics: str) -> str:
    """The agent's own part of an answer's latency: each timed handler's and the event
    loop's lag, over the agent's life."""
    parts = []
    for handler in ("/healthz", "/metrics"):
        pattern = re.compile(r'^container_agent_http_request_duration_seconds_bucket\{handler="'
                             + re.escape(handler) + r'",le="([^"]+)"\} (\S+)$', re.M)
        parts.append(f"{handler} handler {latency_quantiles(metrics, pattern)}")
    lag = re.compile(r'^container_agent_event_loop_lag_seconds_bucket\{le="([^"]+)"\} (\S+)$',
                     re.M)
    parts.append(f"event loop lag {latency_quantiles(metrics, lag)}")
    waits = dict(re.findall(r'^container_agent_background_waits_total\{waited_for="(\w+)"\}'
                            r' (\S+)$', metrics, re.M))
    if waits:
        parts.append("background loops waited " + ", ".join(
            f"{float(n):.0f} times for {what.replace('_', ' ')}" for what, n in waits.items()))
    return "; ".join(parts)
