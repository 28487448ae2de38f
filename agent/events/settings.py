"""The events component's settings (the `[events]` table)."""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType
from typing import Any

from agent.core.component import Setting


def _resources(v: Any) -> str | None:
    bad = [r for r in v if r not in ("cpu", "memory", "io", "irq")]
    return f"unknown PSI resource {bad[0]!r} (cpu, memory, io, irq)" if bad else None


def _positive(v: Any) -> str | None:
    return None if v > 0 else "must be > 0"


def _share(v: Any) -> str | None:
    return None if 0 < v <= 1 else "must be in (0, 1]"


def _window(v: Any) -> str | None:
    return None if 500_000 <= v <= 10_000_000 else "must be between 500000 and 10000000 µs"


SETTINGS: Mapping[str, Setting] = MappingProxyType(
    {
        "retention_days": Setting((int, float), 14, "keep events this many days", _positive),
        "retention_count": Setting(int, 100_000, "keep at most this many events", _positive),
        "some_stall_us": Setting(int, 150_000, "PSI trigger: stall µs per window", _positive),
        "window_us": Setting(int, 2_000_000, "PSI trigger window, µs (2 s multiples "
                             "without CAP_SYS_RESOURCE)", _window),
        "pressure_resources": Setting(list, ["cpu", "memory", "io"], "PSI files to watch",
                                      _resources),
        "cpu_throttled_share": Setting((int, float), 0.25, "throttled share of a cycle", _share),
        "grafana_url": Setting(str, "", "Grafana base URL for annotations (empty: off)"),
        "grafana_token": Setting(str, "", "Grafana service account token"),
        "webhook_url": Setting(str, "", "URL that receives each event as JSON (empty: off)"),
        "queue_size": Setting(int, 1000, "events queued per sink before dropping", _positive),
        "retry_limit": Setting(int, 5, "delivery retries after the first try"),
        "retry_backoff_s": Setting((int, float), 0.5, "first retry delay, doubled each time",
                                   _positive),
        "retry_backoff_max_s": Setting((int, float), 30, "longest retry delay", _positive),
        "delivery_timeout_s": Setting((int, float), 5, "timeout of one delivery", _positive),
        "poll_interval_s": Setting((int, float), 0.5, "polling of v1 counters without "
                                   "notification (pids.events, memory.failcnt)", _positive),
        "heartbeat_s": Setting((int, float), 15, "SSE keep-alive comment interval", _positive),
        "watch_new_cgroups": Setting(bool, True, "inotify the whole tree for new cgroups"),
        "rmdir_probe": Setting(bool, True, "keep each cgroup2 cgroup's CPU counter at its "
                               "rmdir (eBPF): exact finals when a runtime removes it at once"),
        "final_read_process": Setting(bool, True, "read emptied cgroups' final samples in a "
                                      "process of their own, with its own GIL (prompter "
                                      "under churn); false: in a thread of the agent"),
        "final_read_realtime": Setting(bool, True, "the final-read process at SCHED_FIFO 1 "
                                       "(root): a cgroup's end is read at once on a loaded "
                                       "host"),
        "final_read_forwards_inotify": Setting(
            bool, True, "the final-read process reads the kernel watch's notices and starts a "
            "cgroup's final read at its populated 0 itself, then forwards them to the agent"),
    }
)
