"""collectors/parsers.py and blockdev.py on known inputs (kernel formats, v1 conversions)."""

from __future__ import annotations

from pathlib import Path

import pytest

from collectors.blockdev import BlockDevices, parse_uevent_devname
from collectors.cgroup_v2 import pressure_sample
from collectors.parsers import (
    ParseError,
    parse_cpu_max,
    parse_events,
    parse_flat,
    parse_freezer_state,
    parse_io_stat,
    parse_nested,
    parse_pressure,
    parse_proc_cgroup,
    parse_procs_first,
    parse_single,
    parse_v1_blkio,
    parse_v1_limit,
    parse_v1_memory_stat,
    shares_to_weight,
    translate_v1_memory_stat,
)
from collectors.samples import UNLIMITED
from tests.conftest import FIXTURES


def test_flat_by_key_any_order_and_unknown_keys() -> None:
    a = parse_flat(b"usage_usec 10\nuser_usec 6\nsystem_usec 4\n")
    b = parse_flat(b"system_usec 4\nnew_key 1\nusage_usec 10\nuser_usec 6\n")
    assert a["usage_usec"] == b["usage_usec"] == 10 and b["new_key"] == 1
    assert parse_flat(b"a 1\n\nb 2") == {"a": 1, "b": 2}  # blank line, no final newline
    assert parse_flat(b"") == {}


@pytest.mark.parametrize(
    "bad", [b"a\n", b"a 1 b\n", b"a x\n", b"a 1\nb\n", b"\xff\xfe 1\n", b"a 1.5\n", b"a 1 2 3\n"]
)
def test_flat_rejects(bad: bytes) -> None:
    with pytest.raises(ParseError):
        parse_flat(bad)


def test_single_and_max() -> None:
    assert parse_single(b"max\n") == UNLIMITED
    assert parse_single(b"1048576\n") == 1048576
    assert parse_single(b"0") == 0
    for bad in (b"", b"maximum", b"12 13", b"1e3"):
        with pytest.raises(ParseError):
            parse_single(bad)


def test_cpu_max() -> None:
    assert parse_cpu_max(b"max 100000\n") == (UNLIMITED, 100000)
    assert parse_cpu_max(b"50000 100000\n") == (50000, 100000)
    for bad in (b"max\n", b"max max\n", b"1 2 3\n"):
        with pytest.raises(ParseError):
            parse_cpu_max(bad)


def test_events() -> None:
    assert parse_events(b"populated 1\nfrozen 0\n") == (True, False)
    assert parse_events(b"frozen 1\npopulated 0\n") == (False, True)
    assert parse_events(b"populated 1\n") == (True, None)


def test_pressure_kernel_shape_and_variants() -> None:
    p = parse_pressure(
        b"some avg10=0.10 avg60=0.45 avg300=0.15 total=890404\n"
        b"full avg10=0.00 avg60=0.00 avg300=0.00 total=0\n"
    )
    assert p.some is not None and p.full is not None
    assert (p.some.avg10, p.some.avg60, p.some.avg300, p.some.total) == (0.10, 0.45, 0.15, 890404)
    assert p.full.total == 0
    only = parse_pressure(b"some avg10=1.00 avg60=2.00 avg300=3.00 total=4\n")
    assert only.full is None and only.some is not None and only.some.total == 4
    # keys out of order (not the kernel's, still by key)
    odd = parse_pressure(b"full total=9 avg300=0.30 avg60=0.20 avg10=0.10\n")
    assert odd.full is not None and odd.full.total == 9 and odd.full.avg10 == 0.10
    for bad in (
        b"",
        b"some\n",
        b"other avg10=0 avg60=0 avg300=0 total=0\n",
        b"some avg10=x avg60=0 avg300=0 total=0\n",
        b"some avg10=0.00 total=1\n",
    ):
        with pytest.raises(ParseError):
            parse_pressure(bad)


def test_pressure_unsupported_is_typed() -> None:
    s = pressure_sample(("cpu.pressure",), [None], unsupported=True)
    assert s is not None and s.supported is False and s.cpu is None


def test_io_stat_odd_lines() -> None:
    lines = parse_io_stat(
        b"253:0 \n"
        b"8:0 rbytes=1 wbytes=2 rios=3 wios=4 dbytes=5 dios=6 cost.vrate=100.25 depth=8\n"
        b"7:0\n"
    )
    assert len(lines) == 1
    ln = lines[0]
    assert (ln.major, ln.minor) == (8, 0)
    assert dict(ln.known) == {
        "rbytes": 1,
        "wbytes": 2,
        "rios": 3,
        "wios": 4,
        "dbytes": 5,
        "dios": 6,
    }
    assert dict(ln.extra) == {"cost.vrate": 100.25, "depth": 8.0}
    for bad in (b"8:0 rbytes\n", b"8-0 rbytes=1\n", b"8:0 rbytes=x\n", b"8:0 =1\n", b"x\n"):
        with pytest.raises(ParseError):
            parse_io_stat(bad)


def test_v1_limit_unlimited_forms() -> None:
    assert parse_v1_limit(b"9223372036854771712\n") == UNLIMITED  # 4 KiB pages
    assert parse_v1_limit(b"9223372036854710272\n") == UNLIMITED  # 64 KiB pages
    assert parse_v1_limit(b"-1\n") == UNLIMITED
    assert parse_v1_limit(b"268435456\n") == 268435456


def test_shares_to_weight_matches_runc() -> None:
    # runc/libcontainer ConvertCPUSharesToCgroupV2Value: 1 + ((shares-2)*9999)/262142
    assert shares_to_weight(2) == 1
    assert shares_to_weight(1024) == 39
    assert shares_to_weight(262144) == 10000
    assert shares_to_weight(0) == 1 and shares_to_weight(10**9) == 10000


V1_STAT = (
    b"cache 100\nrss 200\nrss_huge 0\nshmem 5\nmapped_file 7\ndirty 1\nwriteback 2\n"
    b"pgfault 11\npgmajfault 1\ninactive_file 50\nactive_file 50\n"
    b"hierarchical_memory_limit 9223372036854771712\n"
    b"total_cache 1000\ntotal_rss 2000\ntotal_rss_huge 0\ntotal_shmem 50\n"
    b"total_mapped_file 70\ntotal_dirty 10\ntotal_writeback 20\ntotal_pgfault 110\n"
    b"total_pgmajfault 10\ntotal_inactive_file 500\ntotal_active_file 500\n"
)


def test_v1_memory_stat_translation_prefers_totals() -> None:
    m = parse_v1_memory_stat(V1_STAT)
    assert m["anon"] == 2000 and m["file"] == 1000 and m["file_mapped"] == 70
    assert m["file_dirty"] == 10 and m["file_writeback"] == 20 and m["anon_thp"] == 0
    assert m["inactive_file"] == 500 and m["pgfault"] == 110 and m["pgmajfault"] == 10
    assert m["hierarchical_memory_limit"] == 9223372036854771712
    assert not any(k.startswith("total_") for k in m) and "rss" not in m
    # Same answer from the generic path (lines shuffled: totals first).
    shuffled = b"".join(sorted(V1_STAT.splitlines(keepends=True)))
    assert parse_v1_memory_stat(shuffled) == m
    assert translate_v1_memory_stat(parse_flat(V1_STAT)) == m
    # Without total_* keys (a root cgroup on some kernels): local values.
    assert parse_v1_memory_stat(b"rss 3\ncache 4\n") == {"anon": 3, "file": 4}
    with pytest.raises(ParseError):
        parse_v1_memory_stat(b"rss 3\ntotal_rss x\n")


def test_v1_blkio() -> None:
    got = parse_v1_blkio(
        b"254:0 Read 1052672\n254:0 Write 4194304\n254:0 Sync 9441280\n254:0 Async 0\n"
        b"254:0 Discard 4194304\n254:0 Total 9441280\n8:16 Read 1\nTotal 9441281\n"
    )
    assert got[(254, 0)]["Read"] == 1052672 and got[(254, 0)]["Discard"] == 4194304
    assert got[(8, 16)] == {"Read": 1}
    assert parse_v1_blkio(b"Total 0\n") == {}
    for bad in (b"254:0 Read\n", b"254:0 Read x\n", b"Total x\n", b"x Read 1\n"):
        with pytest.raises(ParseError):
            parse_v1_blkio(bad)


def test_freezer_state() -> None:
    assert parse_freezer_state(b"FROZEN\n") is True
    assert parse_freezer_state(b"THAWED\n") is False
    assert parse_freezer_state(b"FREEZING\n") is False  # not completed yet
    with pytest.raises(ParseError):
        parse_freezer_state(b"frozen\n")


def test_proc_cgroup_and_procs() -> None:
    got = parse_proc_cgroup(
        b"9:name=systemd:/\n4:memory:/process_api/abc/x\n1:cpu,cpuacct:/x\n0::/x\n"
    )
    assert got == {
        "name=systemd": "/",
        "memory": "/process_api/abc/x",
        "cpu": "/x",
        "cpuacct": "/x",
        "unified": "/x",
    }
    with pytest.raises(ParseError):
        parse_proc_cgroup(b"garbage\n")
    assert parse_procs_first(b"42\n43\n") == 42
    assert parse_procs_first(b"") is None
    with pytest.raises(ParseError):
        parse_procs_first(b"x\n")


def test_block_devices_cached_and_fallback(tmp_path: Path) -> None:
    devs = BlockDevices(FIXTURES / "unified" / "sys_dev_block")
    assert devs.name(254, 0) == "vda" and devs.name(253, 0) == "zram0"
    assert devs.name(8, 0) == "8:0"
    # Cached: answers stay after the directory is gone.
    root = tmp_path / "block"
    (root / "259:1").mkdir(parents=True)
    (root / "259:1" / "uevent").write_text("MAJOR=259\nMINOR=1\nDEVNAME=nvme0n1p1\n")
    cached = BlockDevices(root)
    assert cached.name(259, 1) == "nvme0n1p1"
    (root / "259:1" / "uevent").unlink()
    assert cached.name(259, 1) == "nvme0n1p1"
    assert parse_uevent_devname(b"MAJOR=1\nDEVNAME=\n") is None
    assert parse_uevent_devname(b"\xff") is None


def test_nested_keyed() -> None:
    got = parse_nested(b"8:0 rbps=max wbps=1048576 riops=max wiops=max\n253:0 \n")
    assert got == {
        "8:0": {"rbps": "max", "wbps": "1048576", "riops": "max", "wiops": "max"},
        "253:0": {},
    }
    for bad in (b"8:0 rbps\n", b"8:0 =1\n", b"\xff x=1\n"):
        with pytest.raises(ParseError):
            parse_nested(bad)
