"""Exports: columns, deterministic record ids, byte-identical re-runs in csv/jsonl/parquet,
parquet read-back, group-by totals, time parsing, agentctl argument errors."""

from __future__ import annotations

import csv
import io
import json
from collections import defaultdict
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from agent.cli.agentctl import main as agentctl
from agent.ledger.export import (
    GROUP_COLUMNS,
    ROW_COLUMNS,
    ExportError,
    build_groups,
    build_rows,
    export,
    parse_time,
)
from agent.ledger.ledger import Ledger
from agent.ledger.periods import NS
from agent.model.snapshot import WorkloadKind
from tests.test_ledger_support import ident, open_ledger, snapshot, synth

T0 = 1_800_000_000
END = 10**11


def _fill(db: Path) -> Ledger:
    """Two pods in two namespaces, a host cgroup above them, over two 10 s periods."""
    led = open_ledger(db, period=10, grace=0)
    pod = ident("/k", 1, kind=WorkloadKind.CGROUP, runtime="")
    a = ident("/k/a", 2, id="a" * 64, name="web", pod_name="web-1", namespace="shop",
              labels={"team": "red", "app": "web"})
    b = ident("/k/b", 3, id="b" * 64, name="db", runtime="containerd", pod_name="db-1",
              namespace="shop", labels={"team": "blue"})
    c = ident("/k/c", 4, id="c" * 64, name="batch", pod_name="job-1", namespace="jobs",
              labels={"team": "red"})
    ws = [(pod, "/k", 1), (a, "/k/a", 2), (b, "/k/b", 3), (c, "/k/c", 4)]
    for step, t in enumerate((1, 6, 13, 19)):
        cpus = {2: 1000 * step**2, 3: 700 * step, 4: 50 * step}
        cpus[1] = sum(cpus.values()) + 33 * step  # the parent's own processes
        led.observe_snapshot(snapshot(
            [(w, synth(p, i, T0 + t, cpu=cpus[i], mem=(i << 20) + step, pids=i + step,
                       io=(10 * step * i, 5 * step, step, step)))
             for w, p, i in ws], seq=step + 1))
    led.close_due((T0 + 40) * NS)
    return led


def test_rows_have_the_columns_and_stable_ids(tmp_path: Path) -> None:
    led = _fill(tmp_path / "l.db")
    rows = build_rows(led.storage.rows(0, END))
    assert rows and all(tuple(r) == ROW_COLUMNS for r in rows)
    ids = [r["RecordId"] for r in rows]
    assert len(set(ids)) == len(ids)
    again = build_rows(open_ledger(tmp_path / "l.db").storage.rows(0, END))
    assert [r["RecordId"] for r in again] == ids
    web = [r for r in rows if r["ResourceName"] == "web" and r["x_Meter"] == "cpu_usec"]
    assert {r["x_PodName"] for r in web} == {"web-1"}
    assert json.loads(web[0]["Tags"]) == {"app": "web", "team": "red"}
    assert sum(r["ConsumedQuantity"] for r in web) == 9000
    assert all(r["ConsumedUnit"] == "microsecond" and r["x_Method"] == "exact_counter"
               for r in web)


@pytest.mark.parametrize("fmt", ["csv", "jsonl", "parquet"])
def test_the_same_export_twice_is_byte_identical(tmp_path: Path, fmt: str) -> None:
    _fill(tmp_path / "l.db").storage.store.close()
    outs = []
    for _ in range(2):  # each run opens the store afresh, like two agentctl invocations
        led = open_ledger(tmp_path / "l.db")
        outs.append(export(led.storage.rows(0, END), fmt)[0])
        outs.append(export(led.storage.rows(0, END), fmt, "namespace")[0])
        led.storage.store.close()
    assert outs[0] == outs[2] and outs[1] == outs[3]
    assert len(outs[0]) > 1000


def test_formats_carry_the_same_rows(tmp_path: Path) -> None:
    stored = _fill(tmp_path / "l.db").storage.rows(0, END)
    from_jsonl = [json.loads(line) for line in export(stored, "jsonl")[0].splitlines()]
    from_csv = list(csv.DictReader(io.StringIO(export(stored, "csv")[0].decode())))
    table = pq.read_table(io.BytesIO(export(stored, "parquet")[0]))
    from_parquet = table.to_pylist()
    assert len(from_jsonl) == len(from_csv) == len(from_parquet) > 0
    for j, c, p in zip(from_jsonl, from_csv, from_parquet, strict=True):
        assert {k: str(v) for k, v in j.items()} == c
        p["ChargePeriodStart"] = p["ChargePeriodStart"].strftime("%Y-%m-%dT%H:%M:%SZ")
        p["ChargePeriodEnd"] = p["ChargePeriodEnd"].strftime("%Y-%m-%dT%H:%M:%SZ")
        assert p == j


@pytest.mark.parametrize("group_by", ["container", "pod", "namespace", "runtime", "label:team"])
def test_group_totals_equal_the_sum_of_their_rows(tmp_path: Path, group_by: str) -> None:
    stored = _fill(tmp_path / "l.db").storage.rows(0, END)
    groups = build_groups(stored, group_by)
    assert groups and all(tuple(g) == GROUP_COLUMNS for g in groups)
    field = {"container": "ResourceId", "pod": "x_PodName", "namespace": "x_Namespace",
             "runtime": "x_Runtime"}.get(group_by)
    # Leaf rows (the containers) summed by hand from the plain export.
    expect: dict[tuple[str, str, int], int] = defaultdict(int)
    for r in build_rows(stored):
        if r["x_CgroupPath"] == "/k" or r["x_Meter"] != "cpu_usec":
            continue
        key = json.loads(r["Tags"]).get("team", "") if field is None else r[field]
        expect[(key, r["x_Meter"], r["ChargePeriodStart"])] += r["ConsumedQuantity"]
    got = {(g["x_GroupKey"], g["x_Meter"], g["ChargePeriodStart"]): g["ConsumedQuantity"]
           for g in groups if g["x_Meter"] == "cpu_usec"}
    assert expect, "the fixture has container rows to group"
    for k, v in expect.items():
        assert got[k] == v
    if group_by == "namespace":
        assert {k[0] for k in got} == {"shop", "jobs", ""}


def test_peak_meters_aggregate_by_max(tmp_path: Path) -> None:
    stored = _fill(tmp_path / "l.db").storage.rows(0, END)
    rows = [r for r in build_rows(stored) if r["x_Meter"] == "memory_peak_bytes"
            and r["x_Namespace"] == "shop"]
    groups = [g for g in build_groups(stored, "namespace")
              if g["x_Meter"] == "memory_peak_bytes" and g["x_GroupKey"] == "shop"]
    assert rows and groups, "the fixture has peak rows in namespace shop"
    for g in groups:
        same = [r["ConsumedQuantity"] for r in rows
                if r["ChargePeriodStart"] == g["ChargePeriodStart"]]
        assert g["ConsumedQuantity"] == max(same) and g["x_Aggregation"] == "max"


def test_parse_time() -> None:
    assert parse_time("2027-01-15T08:00:00Z") == 1800000000
    assert parse_time("2027-01-15T09:00:00+01:00") == 1800000000
    assert parse_time("2027-01-15T08:00:00") == 1800000000
    assert parse_time("1800000000") == 1800000000
    for bad in ("yesterday", "2027-13-01", "", "12:00"):
        with pytest.raises(ExportError):
            parse_time(bad)


@pytest.mark.parametrize("argv, needle", [
    (["--from", "noon", "--to", "1"], "--from: 'noon' is not a time"),
    (["--from", "2", "--to", "1"], "--to must be after --from"),
    (["--from", "0", "--to", "10", "--group-by", "colour"], "group-by: 'colour'"),
])
def test_agentctl_bad_arguments_are_one_line_and_exit_2(
    argv: list[str], needle: str, capsys: pytest.CaptureFixture[str], tmp_path: Path,
) -> None:
    code = agentctl(["--socket", str(tmp_path / "none.sock"), "billing", "export", *argv])
    err = capsys.readouterr().err
    assert code == 2
    assert needle in err and len(err.strip().splitlines()) == 1


def test_parquet_without_pyarrow_is_one_clear_line(monkeypatch: pytest.MonkeyPatch) -> None:
    import sys

    monkeypatch.setitem(sys.modules, "pyarrow", None)  # as if the extra were not installed
    with pytest.raises(ExportError) as err:
        export([], "parquet")
    assert "needs pyarrow" in str(err.value) and "\n" not in str(err.value)
