"""Render every dashboard to JSON text: deterministic (sorted keys, fixed ids) so the committed
files can be compared with a fresh rendering."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

from grafanalib._gen import DashboardEncoder
from grafanalib.core import Dashboard

from dashboards import accounting, container_detail, events, host_overview

JSON_DIR = Path(__file__).parent / "json"

DASHBOARDS: dict[str, Callable[[], Dashboard]] = {
    "host-overview.json": host_overview.build,
    "container-detail.json": container_detail.build,
    "accounting.json": accounting.build,
    "events.json": events.build,
}


def render(dashboard: Dashboard) -> str:
    data = dashboard.to_json_data()
    return json.dumps(data, sort_keys=True, indent=2, cls=DashboardEncoder) + "\n"


def render_all() -> dict[str, str]:
    return {name: render(build()) for name, build in DASHBOARDS.items()}


def stale(directory: Path = JSON_DIR) -> list[str]:
    """Names whose committed JSON differs from a fresh rendering (or is missing)."""
    out = []
    for name, text in render_all().items():
        path = directory / name
        if not path.is_file() or path.read_text() != text:
            out.append(name)
    return out


def write_all(directory: Path = JSON_DIR) -> list[Path]:
    directory.mkdir(parents=True, exist_ok=True)
    written = []
    for name, text in render_all().items():
        path = directory / name
        path.write_text(text)
        written.append(path)
    return written
