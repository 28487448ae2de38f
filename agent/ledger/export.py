"""Billing exports: one row per (subject, meter, period, revision), or totals per group.

Rows use FOCUS column names where one fits (ChargePeriodStart/End, ConsumedQuantity,
ConsumedUnit, ChargeClass, ResourceId/Name/Type, Tags) and `x_`-prefixed names otherwise.
Output is deterministic: a fixed column order, rows sorted on their identity, no generation
timestamp, so the same export run twice gives byte-identical files.

`RecordId` = sha256 of (schema version, host id, boot id, cgroup inode, subject, meter,
period start, period end, revision): stable across re-exports, unique per correction revision,
so a consumer upserts on it.

Group totals: additive meters sum, peak meters take the max. Within one group a row is left out
when an ancestor cgroup of the same boot has a row in that group (hierarchical counters already
contain it), so nothing is counted twice inside a group; `unattributed` rows are always inside
their parent's own row and so never add to a group.
"""

from __future__ import annotations

import csv
import functools
import hashlib
import io
import json
from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

from agent.ledger.meters import METERS, SELF, UNATTRIBUTED, Aggregation
from agent.ledger.storage import StoredRow

SCHEMA_VERSION = 1
FORMATS = ("csv", "jsonl", "parquet", "json")
MEDIA_TYPES = {
    "csv": "text/csv; charset=utf-8",
    "jsonl": "application/x-ndjson",
    "json": "application/json",
    "parquet": "application/vnd.apache.parquet",
}
GROUP_KEYS = ("container", "pod", "namespace", "runtime")

ROW_COLUMNS = (
    "RecordId", "x_SchemaVersion", "x_HostId", "x_BootId", "x_CgroupInode", "x_CgroupPath",
    "ResourceId", "ResourceName", "ResourceType", "x_Runtime", "x_PodName", "x_PodUid",
    "x_Namespace", "Tags", "x_Subject", "ChargePeriodStart", "ChargePeriodEnd", "x_Meter",
    "ConsumedQuantity", "ConsumedUnit", "x_Method", "x_SampleCount", "x_ResetCount",
    "x_Revision", "ChargeClass",
)
GROUP_COLUMNS = (
    "RecordId", "x_SchemaVersion", "x_GroupBy", "x_GroupKey", "ChargePeriodStart",
    "ChargePeriodEnd", "x_Meter", "ConsumedQuantity", "ConsumedUnit", "x_Aggregation",
    "x_Method", "x_RowCount", "x_SampleCount", "x_ResetCount", "x_MaxRevision",
)
_INT_COLUMNS = frozenset({
    "x_SchemaVersion", "x_CgroupInode", "ConsumedQuantity", "x_SampleCount", "x_ResetCount",
    "x_Revision", "x_RowCount", "x_MaxRevision",
})
_TIME_COLUMNS = frozenset({"ChargePeriodStart", "ChargePeriodEnd"})


class ExportError(ValueError):
    """A bad export request; str(e) is one line for the user."""


def parse_time(text: str, what: str = "time") -> int:
    """ISO 8601 (UTC when no offset is given) or epoch seconds -> epoch seconds."""
    t = text.strip()
    try:
        return int(float(t)) if t.replace(".", "", 1).lstrip("-").isdigit() else _iso(t)
    except (ValueError, OverflowError):
        raise ExportError(
            f"{what}: {text!r} is not a time (use ISO 8601 like 2026-01-31T13:00:00Z,"
            " or epoch seconds)") from None


def _iso(t: str) -> int:
    dt = datetime.fromisoformat(t.replace("z", "Z"))
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=UTC)
    return int(dt.timestamp())


@functools.lru_cache(maxsize=4096)  # a few distinct period bounds per export
def iso(epoch_s: int) -> str:
    return datetime.fromtimestamp(epoch_s, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def check_group_by(group_by: str | None) -> str | None:
    if not group_by:
        return None
    if group_by in GROUP_KEYS or (group_by.startswith("label:") and len(group_by) > 6):
        return group_by
    raise ExportError(
        f"group-by: {group_by!r} is not one of {', '.join(GROUP_KEYS)} or label:KEY")


def check_format(fmt: str) -> str:
    if fmt not in FORMATS:
        raise ExportError(f"format: {fmt!r} is not one of {', '.join(FORMATS)}")
    return fmt


def record_id(*parts: object) -> str:
    return hashlib.sha256("\x1f".join(str(p) for p in parts).encode()).hexdigest()


def _identity_columns(ident: Mapping[str, Any], cgroup: str) -> dict[str, Any]:
    labels = ident.get("labels") or {}
    return {
        "ResourceId": ident.get("id") or cgroup,
        "ResourceName": ident.get("name") or "",
        "ResourceType": ident.get("kind") or "",
        "x_Runtime": ident.get("runtime") or "",
        "x_PodName": ident.get("pod_name") or "",
        "x_PodUid": ident.get("pod_uid") or "",
        "x_Namespace": ident.get("namespace") or "",
        "Tags": json.dumps(labels, sort_keys=True, separators=(",", ":")),
    }


def row_record(r: StoredRow, who: Mapping[str, Any]) -> dict[str, Any]:
    """One row's columns; `who`: its identity's (_identity_columns)."""
    m = METERS[r.meter]
    return {
        "RecordId": record_id(SCHEMA_VERSION, r.host_id, r.boot_id, r.inode, r.subject,
                              r.meter, r.period_start, r.period_end, r.revision),
        "x_SchemaVersion": SCHEMA_VERSION,
        "x_HostId": r.host_id,
        "x_BootId": r.boot_id,
        "x_CgroupInode": r.inode,
        "x_CgroupPath": r.cgroup,
        **who,
        "x_Subject": r.subject,
        "ChargePeriodStart": r.period_start,
        "ChargePeriodEnd": r.period_end,
        "x_Meter": r.meter,
        "ConsumedQuantity": r.quantity,
        "ConsumedUnit": m.unit,
        "x_Method": m.method.value,
        "x_SampleCount": r.n_samples,
        "x_ResetCount": r.n_resets,
        "x_Revision": r.revision,
        "ChargeClass": "Correction" if r.revision > 0 else "",
    }


def _sort_key(r: StoredRow) -> tuple[Any, ...]:
    return (r.period_start, r.host_id, r.boot_id, r.cgroup, r.inode, r.subject != SELF,
            r.meter, r.revision)


def build_rows(stored: Iterable[StoredRow]) -> list[dict[str, Any]]:
    # An incarnation's rows share one identity mapping (storage.rows): its columns are built
    # once. The rows hold their identities for the whole export, so the ids stay unique.
    out = []
    cache: dict[tuple[int, str], dict[str, Any]] = {}
    for r in sorted(stored, key=_sort_key):
        key = (id(r.identity), r.cgroup)
        who = cache.get(key)
        if who is None:
            who = cache[key] = _identity_columns(r.identity, r.cgroup)
        out.append(row_record(r, who))
    return out


def _group_key(group_by: str) -> Callable[[StoredRow], str]:
    if group_by.startswith("label:"):
        label = group_by[6:]
        return lambda r: str((r.identity.get("labels") or {}).get(label, ""))
    field = {"container": "id", "pod": "pod_name", "namespace": "namespace",
             "runtime": "runtime"}[group_by]

    def key(r: StoredRow) -> str:
        v = r.identity.get(field)
        if group_by == "pod" and not v:
            v = r.identity.get("pod_uid")
        if group_by == "container" and not v:
            v = r.cgroup
        return str(v or "")
    return key


def _ancestors(path: str) -> Iterable[str]:
    while path not in ("", "/"):
        path = path.rsplit("/", 1)[0] or "/"
        yield path


def build_groups(stored: Iterable[StoredRow], group_by: str) -> list[dict[str, Any]]:
    keyf = _group_key(group_by)
    rows = sorted(stored, key=_sort_key)
    # (group, meter, period) -> cgroups (per boot) that have a row there
    present: dict[tuple[str, str, int], set[tuple[str, str]]] = defaultdict(set)
    for r in rows:
        if r.subject == SELF:
            present[(keyf(r), r.meter, r.period_start)].add((r.boot_id, r.cgroup))
    acc: dict[tuple[int, str, str], dict[str, Any]] = {}
    for r in rows:
        g = (keyf(r), r.meter, r.period_start)
        inside = r.subject == UNATTRIBUTED or any(
            (r.boot_id, a) in present[g] for a in _ancestors(r.cgroup))
        if inside:
            continue
        m = METERS[r.meter]
        k = (r.period_start, g[0], r.meter)
        cur = acc.get(k)
        if cur is None:
            cur = acc[k] = {
                "x_SchemaVersion": SCHEMA_VERSION, "x_GroupBy": group_by, "x_GroupKey": g[0],
                "ChargePeriodStart": r.period_start, "ChargePeriodEnd": r.period_end,
                "x_Meter": r.meter, "ConsumedQuantity": 0, "ConsumedUnit": m.unit,
                "x_Aggregation": m.aggregation.value, "x_Method": m.method.value,
                "x_RowCount": 0, "x_SampleCount": 0, "x_ResetCount": 0, "x_MaxRevision": 0,
            }
        if m.aggregation is Aggregation.MAX:
            cur["ConsumedQuantity"] = max(cur["ConsumedQuantity"], r.quantity)
        else:
            cur["ConsumedQuantity"] += r.quantity
        cur["x_RowCount"] += 1
        cur["x_SampleCount"] += r.n_samples
        cur["x_ResetCount"] += r.n_resets
        cur["x_MaxRevision"] = max(cur["x_MaxRevision"], r.revision)
    out = []
    for k in sorted(acc):
        row = acc[k]
        row["RecordId"] = record_id(SCHEMA_VERSION, "group", group_by, row["x_GroupKey"],
                                    row["x_Meter"], row["ChargePeriodStart"],
                                    row["ChargePeriodEnd"], row["x_MaxRevision"])
        out.append({c: row[c] for c in GROUP_COLUMNS})
    return out


def export(
    stored: Iterable[StoredRow], fmt: str, group_by: str | None = None,
) -> tuple[bytes, str]:
    """(file content, media type) for the rows in the requested format."""
    check_format(fmt)
    columns: Sequence[str]
    if group_by:
        records, columns = build_groups(stored, check_group_by(group_by) or ""), GROUP_COLUMNS
    else:
        records, columns = build_rows(stored), ROW_COLUMNS
    if fmt == "csv":
        body = render_csv(records, columns)
    elif fmt == "jsonl":
        body = render_jsonl(records, columns)
    elif fmt == "json":
        body = render_json(records, columns)
    else:
        body = render_parquet(records, columns)
    return body, MEDIA_TYPES[fmt]


def _text_row(rec: Mapping[str, Any], columns: Sequence[str]) -> dict[str, Any]:
    return {c: iso(rec[c]) if c in _TIME_COLUMNS else rec[c] for c in columns}


def render_csv(records: Iterable[Mapping[str, Any]], columns: Sequence[str]) -> bytes:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(columns)
    for rec in records:  # csv.writer: DictWriter re-checked every row's keys
        w.writerow(_text_row(rec, columns).values())
    return buf.getvalue().encode()


def render_jsonl(records: Iterable[Mapping[str, Any]], columns: Sequence[str]) -> bytes:
    return b"".join(
        json.dumps(_text_row(rec, columns), separators=(",", ":")).encode() + b"\n"
        for rec in records)


def render_json(records: Iterable[Mapping[str, Any]], columns: Sequence[str]) -> bytes:
    return json.dumps([_text_row(rec, columns) for rec in records],
                      separators=(",", ":")).encode()


class MissingPyarrow(ExportError):
    pass


def render_parquet(records: Sequence[Mapping[str, Any]], columns: Sequence[str]) -> bytes:
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError:
        raise MissingPyarrow(
            "format parquet needs pyarrow (pip install 'container-agent[parquet]')") from None
    fields = []
    for c in columns:
        if c in _TIME_COLUMNS:
            fields.append(pa.field(c, pa.timestamp("s", tz="UTC"), nullable=False))
        elif c in _INT_COLUMNS:
            fields.append(pa.field(c, pa.int64(), nullable=False))
        else:
            fields.append(pa.field(c, pa.string(), nullable=False))
    schema = pa.schema(fields)
    data = {c: [rec[c] for rec in records] for c in columns}
    for c in _TIME_COLUMNS:
        data[c] = [datetime.fromtimestamp(v, UTC) for v in data[c]]
    table = pa.table(data, schema=schema)
    sink = io.BytesIO()
    pq.write_table(table, sink, compression="zstd")
    return sink.getvalue()
