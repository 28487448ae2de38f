"""The web UI in a real headless Chromium against a real agentd and real cgroups.

Each test opens the page the way a person would (1280 px wide), finds its own test cgroup by
typing into the filter, and reads what the browser drew: table cells, SVG chart paths and the
points the drawing code counted, the events pane fed by the SSE stream. Screenshots go to the
test's tmp dir and are copied to var/ (printed) for people to look at.
"""

from __future__ import annotations

import asyncio
import json
import re
import shutil
import subprocess
import sys
import time
import uuid
from pathlib import Path

from tests.support.agentd import REPO, RunningAgent, running_agent
from tests.support.browser import Page, chromium
from tests.support.cgroups import CgroupFactory, TestCgroup

PY = sys.executable
MIB = 1 << 20
#: 1 s cycles and a 2 min window: every cycle is a chart point (a 15 min window keeps every
#: 5th at 1 s).
CONFIG = {"interval": 1, "web": {"history_seconds": 120}}
#: The first cycle walks every cgroup on the host: slow while other tests load it.
READY_S = 120


def _limit(cg: TestCgroup, ctrl: str, v1_file: str, v2_file: str, value: str) -> None:
    """Set a limit in the v1 hierarchy where the controller lives there (hybrid host), else v2."""
    if ctrl in cg.dirs:
        cg.write(ctrl, v1_file, value)
    else:
        cg.write("unified", v2_file, value)


def _keep(shot: Path, name: str) -> Path:
    out = REPO / "var" / name
    out.parent.mkdir(exist_ok=True)
    shutil.copyfile(shot, out)
    print(f"screenshot: {out}")
    return out


def _row(cg: TestCgroup) -> str:
    return f"document.querySelector('#rows tr[data-cgroup={json.dumps(cg.rel)}]')"


async def _open_page(page: Page, agent: RunningAgent, cg: TestCgroup) -> None:
    """Load the page, show every kind, type the cgroup's name into the filter."""
    await page.goto(agent.base_url + "/")
    await page.wait("document.querySelectorAll('#rows tr').length > 0 || document.body.dataset.seq")
    await page.eval("(() => { const k = document.getElementById('kind'); k.value = '';"
                    " k.dispatchEvent(new Event('change')); })()")
    await page.eval("document.getElementById('filter').focus()")
    await page.send("Input.insertText", text=cg.name)
    await page.wait(f"{_row(cg)} !== null")


def test_table_charts_and_keyboard(cgroups: CgroupFactory, tmp_path: Path) -> None:
    cg = cgroups.create(f"web-burn-{uuid.uuid4().hex[:6]}")
    _limit(cg, "cpu", "cpu.cfs_period_us", "cpu.max", "100000")
    _limit(cg, "cpu", "cpu.cfs_quota_us", "cpu.max", "50000")
    _limit(cg, "memory", "memory.limit_in_bytes", "memory.max", str(256 * MIB))
    cg.burn()
    other = cgroups.create(f"web-idle-{uuid.uuid4().hex[:6]}")

    async def body(agent: RunningAgent) -> None:
        async with chromium() as page:
            await _open_page(page, agent, cg)
            # Filtering: only the burner's row is left (the idle cgroup is filtered out).
            rows = await page.eval("[...document.querySelectorAll('#rows tr')]"
                                   ".map(r => r.dataset.cgroup)")
            assert rows == [cg.rel]
            # The row shows the name, its CPU quota and its memory limit (text, not colour).
            await page.wait(f"/\\d/.test({_row(cg)}.cells[3].textContent)")
            cells = await page.eval(f"[...{_row(cg)}.cells].map(c => c.textContent)")
            assert cells[0].startswith(cg.name)
            assert cells[3].endswith("/ 0.500")
            assert "/ 256.0 MiB" in cells[4] and "%" in cells[4]
            assert cells[8] == "running"
            # The burner's CPU shows up: at most its quota (0.5 cores), more than nothing.
            await page.wait(f"parseFloat({_row(cg)}.cells[3].textContent) > 0.05", timeout=60)

            # Sorting by CPU (descending) puts the burner above the idle cgroup.
            await page.eval("document.getElementById('filter').value = 'web-'; "
                            "document.getElementById('filter').dispatchEvent(new Event('input'))")
            await page.eval("document.querySelector('th[data-key=cpu_cores] button').click()")
            order = await page.eval("[...document.querySelectorAll('#rows tr')]"
                                    ".map(r => r.dataset.cgroup)")
            assert order.index(cg.rel) < order.index(other.rel)
            sort = await page.eval("document.querySelector('th[data-key=cpu_cores]')"
                                   ".getAttribute('aria-sort')")
            assert sort == "descending"

            _keep(await page.screenshot(tmp_path / "web-table.png"), "web-table.png")
            # Keyboard: focus the row, Enter opens the workload view.
            await page.eval(f"{_row(cg)}.focus()")
            await page.key("Enter")
            await page.wait("!document.getElementById('detail').hidden")
            # Charts draw once a few cycles are in the ring: the CPU path has >= 3 points and
            # as many path commands as points (no gap), the quota and limit lines are drawn.
            cpu_path = "document.querySelector('#charts figure:nth-child(1) path.s0')"
            n = await page.wait(f"{cpu_path} && +{cpu_path}.dataset.points >= 3 "
                                f"&& +{cpu_path}.dataset.points", timeout=60)
            d = await page.eval(f"{cpu_path}.getAttribute('d')")
            assert len(re.findall(r"[ML]", d)) == n
            ys = [float(y) for y in re.findall(r"[ML][\d.]+ ([\d.]+)", d)]
            assert min(ys) < max(ys) or n >= 3  # points are placed on the chart
            quota = await page.eval("+document.querySelector('#charts figure:nth-child(1) "
                                    "line.limit').dataset.limit")
            assert quota == 0.5
            limit = await page.eval("+document.querySelector('#charts figure:nth-child(2) "
                                    "line.limit').dataset.limit")
            assert limit == 256 * MIB
            captions = await page.eval("[...document.querySelectorAll('#charts figcaption')]"
                                       ".map(c => c.textContent)")
            assert captions == ["CPU (cores)", "Memory", "IO", "Network",
                                "Pressure (PSI some, avg10)"]
            # The chart's points are the agent's history: as many as the endpoint has values.
            hist = agent.get("/api/v1/history/" + cg.rel.lstrip("/"))
            assert sum(v is not None for v in hist["series"]["cpu_cores"]) >= n
            ns = await page.eval("document.getElementById('detail-ns').textContent")
            assert ns  # namespaces, or the sentence saying none are known
            _keep(await page.screenshot(tmp_path / "web-detail.png"), "web-detail.png")

            # The view is modal: Tab keeps the focus inside it.
            await page.key("Tab")
            assert await page.eval("document.activeElement.id") == "detail-close"
            # Esc closes the view and gives the focus back to the row.
            await page.key("Escape")
            await page.wait("document.getElementById('detail').hidden")
            focused = await page.eval("document.activeElement.dataset.cgroup")
            assert focused == cg.rel
            # Arrow keys move between rows.
            await page.key("ArrowDown")
            moved = await page.eval("document.activeElement.dataset.cgroup")
            assert moved != cg.rel and moved is not None

    with running_agent(CONFIG, ready=False) as agent:
        agent.wait_ready(READY_S)
        asyncio.run(body(agent))


def test_oom_kill_in_events_pane_within_2s(cgroups: CgroupFactory, tmp_path: Path) -> None:
    cg = cgroups.create(f"web-oom-{uuid.uuid4().hex[:6]}")
    _limit(cg, "memory", "memory.limit_in_bytes", "memory.max", str(32 * MIB))

    async def body(agent: RunningAgent) -> None:
        async with chromium() as page:
            await page.goto(agent.base_url + "/")
            await page.wait("document.getElementById('events-status').textContent === '(live)'")
            # A process that allocates beyond the limit when told to: its start proves the
            # agent watches the cgroup (container_started reaches the pane first).
            proc = cg.spawn([PY, "-S", "-c", "import sys\nsys.stdin.readline()\n"
                             "x = bytearray(200 << 20)"], stdin=subprocess.PIPE)
            sel = f"#event-list li[data-cgroup={json.dumps(cg.rel)}]"
            started = json.dumps(sel + "[data-type=container_started]")
            await page.wait(f"document.querySelector({started}) !== null")
            assert proc.stdin is not None
            proc.stdin.write(b"go\n")
            proc.stdin.close()
            await asyncio.to_thread(proc.wait)
            killed_at = time.monotonic()
            oom = json.dumps(sel + "[data-type=oom_kill]")
            await page.wait(f"document.querySelector({oom}) !== null", timeout=2.0, interval=0.02)
            seen = time.monotonic() - killed_at
            print(f"oom_kill in the events pane {seen * 1000:.0f} ms after the process died")
            text = await page.eval(f"document.querySelector({oom}).textContent")
            assert "ERROR" in text and "oom_kill" in text and cg.name in text
            assert proc.returncode == -9
            _keep(await page.screenshot(tmp_path / "web-oom.png"), "web-oom.png")

    with running_agent(CONFIG, ready=False) as agent:
        agent.wait_ready(READY_S)
        asyncio.run(body(agent))
