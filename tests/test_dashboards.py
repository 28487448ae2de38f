"""The committed dashboard JSON matches its grafanalib source, and is well formed."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from dashboards.generate import DASHBOARDS, JSON_DIR, render_all, stale

ROOT = Path(__file__).resolve().parent.parent


def test_committed_json_is_not_stale() -> None:
    fresh = render_all()
    assert sorted(fresh) == sorted(p.name for p in JSON_DIR.glob("*.json"))
    for name, text in fresh.items():
        assert (JSON_DIR / name).read_text() == text, f"{name} is stale: run python -m dashboards"


def test_rendering_is_deterministic() -> None:
    assert render_all() == render_all()


def test_check_mode_detects_a_stale_file(tmp_path: Path) -> None:
    for name, text in render_all().items():
        (tmp_path / name).write_text(text)
    assert stale(tmp_path) == []
    cmd = [sys.executable, "-m", "dashboards", "--check", "--out", str(tmp_path)]
    assert subprocess.run(cmd, cwd=ROOT, capture_output=True, timeout=60).returncode == 0
    victim = tmp_path / "accounting.json"
    victim.write_text(victim.read_text().replace("core-hours", "core-minutes"))
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 1
    assert proc.stderr.strip() == f"stale: {victim} (run: python -m dashboards)"


def test_generator_writes_files(tmp_path: Path) -> None:
    out = tmp_path / "out"
    proc = subprocess.run(
        [sys.executable, "-m", "dashboards", "--out", str(out)], cwd=ROOT, timeout=60
    )
    assert proc.returncode == 0
    assert sorted(p.name for p in out.iterdir()) == sorted(DASHBOARDS)


def test_unwritable_output_is_one_line(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    proc = subprocess.run(
        [sys.executable, "-m", "dashboards", "--out", str(blocker / "sub")],
        cwd=ROOT, capture_output=True, text=True, timeout=60,
    )
    assert proc.returncode == 1
    assert len(proc.stderr.strip().splitlines()) == 1 and "Traceback" not in proc.stderr


@pytest.mark.parametrize("name", sorted(DASHBOARDS))
def test_dashboard_structure(name: str) -> None:
    d = json.loads((JSON_DIR / name).read_text())
    assert d["uid"].startswith("container-agent-") and d["title"]
    ids = [p["id"] for p in d["panels"]]
    assert len(ids) == len(set(ids)) and all(ids)
    variables = {v["name"] for v in d["templating"]["list"]}
    assert "datasource" in variables
    for panel in d["panels"]:
        g = panel["gridPos"]
        assert 0 < g["w"] <= 24 and g["x"] + g["w"] <= 24
        assert panel["targets"], panel["title"]
        for t in panel["targets"]:
            assert t["datasource"] == {"type": "prometheus", "uid": "${datasource}"}
            used = {v for v in variables if f"${v}" in t["expr"]}
            # Every $variable a query uses is defined (Grafana's own $__ ones aside).
            for token in t["expr"].split("$")[1:]:
                word = token.split("}")[0].split(")")[0].split("[")[0].split('"')[0]
                word = word.split(" ")[0].split(",")[0].split("]")[0]
                assert word.startswith("__") or word in used, (panel["title"], word)


def test_uids_unique_and_provisioning_points_at_json() -> None:
    uids = [json.loads((JSON_DIR / n).read_text())["uid"] for n in DASHBOARDS]
    assert len(set(uids)) == len(uids)
    prov = ROOT / "dashboards" / "provisioning"
    assert "type: file" in (prov / "dashboards" / "container-agent.yaml").read_text()
    ds = (prov / "datasources" / "container-agent.yaml").read_text()
    assert "type: prometheus" in ds and "name: Prometheus" in ds


def _load_yaml(path: Path) -> object:
    """Parse YAML with PyYAML: in this venv if present, else the system python3's."""
    try:
        import yaml  # type: ignore[import-untyped]

        return yaml.safe_load(path.read_text())
    except ImportError:
        pass
    code = "import json, sys, yaml; print(json.dumps(yaml.safe_load(open(sys.argv[1]))))"
    proc = subprocess.run(
        ["/usr/bin/python3", "-c", code, str(path)], capture_output=True, text=True, timeout=60
    )
    if proc.returncode != 0:
        pytest.skip("no PyYAML to parse provisioning files (apt: python3-yaml)")
    return json.loads(proc.stdout)


def test_provisioning_yaml_is_what_grafana_reads() -> None:
    prov = ROOT / "dashboards" / "provisioning"
    ds = _load_yaml(prov / "datasources" / "container-agent.yaml")
    assert isinstance(ds, dict) and ds["apiVersion"] == 1
    (source,) = ds["datasources"]
    assert source["type"] == "prometheus" and source["url"].startswith("http")
    # The dashboards' $datasource variable defaults to this datasource's name.
    for name in DASHBOARDS:
        d = json.loads((JSON_DIR / name).read_text())
        var = next(v for v in d["templating"]["list"] if v["name"] == "datasource")
        assert var["current"]["value"] == source["name"]
    dp = _load_yaml(prov / "dashboards" / "container-agent.yaml")
    assert isinstance(dp, dict) and dp["apiVersion"] == 1
    (provider,) = dp["providers"]
    assert provider["type"] == "file" and provider["options"]["path"].startswith("/")
