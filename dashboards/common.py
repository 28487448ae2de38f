"""Shared pieces of the dashboards: datasource, variables, selectors, panels, layout.

Every query selects through `sel()` so the label names the agent exports live in one place.
The datasource is a dashboard variable, so the JSON imports into any Grafana unchanged.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from grafanalib.core import (
    BarGauge,
    Dashboard,
    GridPos,
    Stat,
    Target,
    Template,
    Templating,
    Time,
    TimeSeries,
)

from agent.exporters.metrics import WORKLOAD_SPECS

PREFIX = "container_agent_"
DATASOURCE = {"type": "prometheus", "uid": "${datasource}"}
RATE = "$__rate_interval"
RANGE = "$__range"
#: Label holding "some"/"full" on the PSI counter. It is the same name as the workload `kind`
#: label, so PSI selectors cannot also filter on the workload kind.
PSI_LEVEL = "level"


def sel(*matchers: str, instance: bool = True, kind: bool = False, container: bool = False) -> str:
    """A label selector body, e.g. sel('device!=""', container=True)."""
    parts = []
    if instance:
        parts.append('instance=~"$instance"')
    if kind:
        parts.append('kind=~"$kind"')
    if container:
        parts.append('name=~"$container"')
    parts.extend(matchers)
    return ", ".join(parts)


#: Workload series carry `id` alone by default (metrics_identity_labels); these labels are on
#: container_agent_workload_info, joined in by id.
IDENTITY = ("name", "kind", "runtime", "cgroup", "pod", "namespace")
#: The agent's per-workload metrics (not workload_info itself, not the network or agent ones).
WORKLOAD_METRICS = frozenset(
    s.name.removeprefix(PREFIX) for s in WORKLOAD_SPECS[1:]
)


def _split(selector: str) -> tuple[str, str]:
    """(the series' own matchers, the identity matchers with instance) of a selector body."""
    parts = [p.strip() for p in selector.split(", ") if p.strip()]

    def label(p: str) -> str:
        return p.split("=")[0].rstrip("!~")

    own = [p for p in parts if label(p) not in IDENTITY]
    ident = [p for p in parts if label(p) in IDENTITY or label(p) == "instance"]
    return ", ".join(own), ", ".join(ident)


def _joined(series: str, ident: str) -> str:
    """A workload series with the identity labels of its workload_info (value unchanged)."""
    return (f"({series} * on(instance, id) group_left({', '.join(IDENTITY)}) "
            f"{PREFIX}workload_info{{{ident}}})")


def m(name: str, selector: str) -> str:
    """A metric with the agent prefix and a selector (workload metrics: joined by id with
    workload_info for the identity labels, which the selector may filter on)."""
    if name not in WORKLOAD_METRICS:
        return f"{PREFIX}{name}{{{selector}}}"
    own, ident = _split(selector)
    return _joined(f"{PREFIX}{name}{{{own}}}", ident)


def rate(name: str, selector: str, window: str = RATE, func: str = "rate") -> str:
    """func(metric[window]) (rate, increase, changes, avg_over_time...), joined like m() for
    workload metrics."""
    if name not in WORKLOAD_METRICS:
        return f"{func}({PREFIX}{name}{{{selector}}}[{window}])"
    own, ident = _split(selector)
    return _joined(f"{func}({PREFIX}{name}{{{own}}}[{window}])", ident)


def increase(name: str, selector: str, window: str = RATE) -> str:
    return rate(name, selector, window, "increase")


def target(expr: str, legend: str = "", ref: str = "A", instant: bool = False) -> Target:
    return Target(
        expr=expr,
        legendFormat=legend,
        refId=ref,
        instant=instant,
        datasource=DATASOURCE,
        intervalFactor=1,
    )


def targets(*pairs: tuple[str, str], instant: bool = False) -> list[Target]:
    """(expr, legend) pairs with refIds A, B, C, ..."""
    return [
        target(expr, legend, chr(ord("A") + i), instant) for i, (expr, legend) in enumerate(pairs)
    ]


def timeseries(
    title: str, pairs: Sequence[tuple[str, str]], unit: str, description: str = "", **kw: Any
) -> TimeSeries:
    return TimeSeries(
        title=title,
        description=description or None,
        dataSource=DATASOURCE,
        targets=targets(*pairs),
        unit=unit,
        legendDisplayMode="table",
        legendCalcs=["mean", "max", "lastNotNull"],
        tooltipMode="multi",
        **kw,
    )


def stat(title: str, expr: str, unit: str, description: str = "") -> Stat:
    return Stat(
        title=title,
        description=description or None,
        dataSource=DATASOURCE,
        targets=[target(expr)],
        format=unit,
        reduceCalc="lastNotNull",
        graphMode="area",
    )


def bars(title: str, expr: str, legend: str, unit: str, description: str = "") -> BarGauge:
    """A ranked, horizontal bar per series: accounting totals over the dashboard range."""
    return BarGauge(
        title=title,
        description=description or None,
        dataSource=DATASOURCE,
        targets=[target(expr, legend, instant=True)],
        format=unit,
        orientation="horizontal",
        displayMode="gradient",
        calc="lastNotNull",
        allValues=False,
        limit=50,
        max=None,
        thresholds=[],
        # Grafana >= 7 reads reduceOptions and fieldConfig; grafanalib writes older fieldOptions.
        extraJson={
            "fieldConfig": {"defaults": {"unit": unit, "min": 0}},
            "options": {
                "reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False},
                "showUnfilled": True,
            },
        },
    )


def table(title: str, columns: Sequence[tuple[str, str, str]], description: str = "") -> Any:
    """Instant queries as columns (expr, header, unit), one row per label set (merge transform)."""
    from grafanalib.core import Table

    pairs = [(expr, header) for expr, header, _ in columns]
    tgts = targets(*pairs, instant=True)
    for t in tgts:
        t.format = "table"
    renames = {f"Value #{t.refId}": legend for t, (_, legend) in zip(tgts, pairs, strict=True)}
    overrides = [
        {"matcher": {"id": "byName", "options": header},
         "properties": [{"id": "unit", "value": unit}]}
        for _, header, unit in columns
    ]
    return Table(
        overrides=overrides,
        title=title,
        description=description or None,
        dataSource=DATASOURCE,
        targets=tgts,
        transformations=[
            {"id": "merge", "options": {}},
            {
                "id": "organize",
                "options": {
                    "excludeByName": {"Time": True},
                    "renameByName": renames,
                    "indexByName": {},
                },
            },
        ],
        extraJson={"options": {"sortBy": [{"displayName": pairs[0][1], "desc": True}]}},
    )


def datasource_var() -> Template:
    return Template(
        name="datasource",
        label="Data source",
        query="prometheus",
        type="datasource",
        default="Prometheus",
    )


def instance_var() -> Template:
    return Template(
        name="instance",
        label="Host",
        query=f"label_values({PREFIX}up, instance)",
        dataSource=DATASOURCE,
        includeAll=True,
        multi=True,
        allValue=".*",
        default="$__all",
        refresh=2,
    )


def kind_var() -> Template:
    return Template(
        name="kind",
        label="Kind",
        query="container,service,cgroup",
        type="custom",
        includeAll=True,
        multi=True,
        allValue=".*",
        default="container",
    )


def container_var() -> Template:
    return Template(
        name="container",
        label="Container",
        query=f'label_values({PREFIX}workload_info{{{sel(kind=True)}}}, name)',
        dataSource=DATASOURCE,
        refresh=2,
        sort=1,
    )


def grafana_annotation() -> dict[str, Any]:
    return {
        "builtIn": 1,
        "datasource": {"type": "grafana", "uid": "-- Grafana --"},
        "enable": True,
        "hide": True,
        "iconColor": "rgba(0, 211, 255, 1)",
        "name": "Annotations & Alerts",
        "type": "dashboard",
    }


def prom_annotation(name: str, expr: str, title: str, tags: str, color: str) -> dict[str, Any]:
    """An annotation drawn wherever `expr` has a value (Grafana's Prometheus annotations)."""
    return {
        "datasource": DATASOURCE,
        "enable": True,
        "expr": expr,
        "iconColor": color,
        "name": name,
        "step": "15s",
        "tagKeys": tags,
        "textFormat": "",
        "titleFormat": title,
        "useValueForTime": False,
    }


def layout(rows: Sequence[tuple[int, Sequence[Any]]]) -> list[Any]:
    """Place panels row by row: each row is (height, panels) and panels share 24 columns."""
    out: list[Any] = []
    y = 0
    for height, panels in rows:
        width = 24 // len(panels)
        for i, panel in enumerate(panels):
            panel.gridPos = GridPos(h=height, w=width, x=i * width, y=y)
            out.append(panel)
        y += height
    return out


def dashboard(
    uid: str,
    title: str,
    description: str,
    variables: list[Template],
    rows: Sequence[tuple[int, Sequence[Any]]],
    annotations: list[dict[str, Any]],
    time_from: str = "now-3h",
) -> Dashboard:
    from grafanalib.core import Annotations

    return Dashboard(
        uid=uid,
        title=title,
        description=description,
        tags=["container-agent"],
        timezone="browser",
        refresh="30s",
        time=Time(time_from, "now"),
        graphTooltip=1,
        templating=Templating(list=[datasource_var(), *variables]),
        annotations=Annotations(list=[grafana_annotation(), *annotations]),
        panels=layout(rows),
    ).auto_panel_ids()
