// The agent's web UI: plain DOM code, no framework. Reads only GET endpoints of this agent.
"use strict";
const $ = (id) => document.getElementById(id);
const ui = {
  rows: [], sortKey: "name", sortDir: 1, interval: 5, openId: null, seq: -1,
  eventsLastId: 0, firstRender: false,
};
const MAX_EVENTS = 200;

// -- formatting ---------------------------------------------------------------------------
const UNITS = ["B", "KiB", "MiB", "GiB", "TiB"];
function fmtBytes(v) {
  if (v === null || v === undefined) return "-";
  let i = 0;
  while (Math.abs(v) >= 1024 && i < UNITS.length - 1) { v /= 1024; i++; }
  const digits = i === 0 ? (v > 0 && v < 10 && v % 1 ? 1 : 0) : (v < 10 ? 2 : 1);
  return v.toFixed(digits) + " " + UNITS[i];
}
const fmtRate = (v) => (v === null || v === undefined ? "-" : fmtBytes(v) + "/s");
const fmtCores = (v) => (v === null || v === undefined ? "-" : v.toFixed(v < 10 ? 3 : 1));
const fmtNum = (v) => (v === null || v === undefined ? "-" : String(Math.round(v)));
const fmtPct = (v) => (v === null || v === undefined ? "-" : v.toFixed(1) + " %");
const fmtTime = (ns) => new Date(ns / 1e6).toISOString().slice(11, 19);
// A 64-hex container id is shown as its 12-character prefix, as docker does.
const shortName = (n) => (/^[0-9a-f]{64}$/.test(n) ? n.slice(0, 12) : n);
const pathOf = (id) => encodeURI(id.replace(/^\/+/, ""));

async function getJSON(url) {
  const r = await fetch(url, { cache: "no-store" });
  const body = await r.json();
  if (!r.ok) throw new Error(body.error || r.statusText);
  return body;
}

function el(tag, text, cls) {
  const e = document.createElement(tag);
  if (text !== undefined && text !== null) e.textContent = text;
  if (cls) e.className = cls;
  return e;
}

// -- host header --------------------------------------------------------------------------
async function loadHost() {
  try {
    const h = await getJSON("/api/v1/host");
    $("host-name").textContent = h.hostname;
    document.title = h.hostname + " - container-agent";
    const facts = [["Kernel", h.kernel], ["cgroups", h.cgroup_layout], ["CPUs", h.cpus],
      ["Memory", fmtBytes(h.memory_bytes)], ["Agent", h.agent_version], ["Workloads", h.workloads]];
    $("host-facts").replaceChildren(...facts.map(([k, v]) => {
      const d = el("div");
      d.append(el("dt", k), el("dd", String(v)));
      return d;
    }));
  } catch (e) { /* the health line says what is wrong */ }
}

async function loadHealth() {
  const line = $("health");
  try {
    const r = await fetch("/healthz", { cache: "no-store" });
    const h = await r.json();
    const ok = r.ok && h.status === "ok";
    line.textContent = ok
      ? `Health: OK, snapshot ${h.snapshot_seq}, ${h.snapshot_age_s.toFixed(1)} s old`
      : `Health: ${h.status}`;
    line.classList.toggle("bad", !ok);
  } catch (e) {
    line.textContent = "Health: agent unreachable";
    line.classList.add("bad");
  }
}

// -- workload table -----------------------------------------------------------------------
function sortValue(w, key) {
  if (key === "io") return (w.io_read_bytes_per_s || 0) + (w.io_write_bytes_per_s || 0);
  if (key === "net") return (w.net_rx_bytes_per_s || 0) + (w.net_tx_bytes_per_s || 0);
  const v = w[key];
  return v === null || v === undefined ? -Infinity : v;
}

function visibleRows() {
  const words = $("filter").value.toLowerCase().split(/\s+/).filter(Boolean);
  const rows = ui.rows.filter((w) => {
    const hay = `${w.name} ${w.runtime} ${w.image} ${w.cgroup} ${w.id} ${w.state}`.toLowerCase();
    return words.every((word) => hay.includes(word));
  });
  const k = ui.sortKey, dir = ui.sortDir;
  rows.sort((a, b) => {
    const va = sortValue(a, k), vb = sortValue(b, k);
    const c = typeof va === "string" || typeof vb === "string"
      ? String(va).localeCompare(String(vb)) : va - vb;
    return c * dir || a.cgroup.localeCompare(b.cgroup);
  });
  return rows;
}

function memoryCell(w) {
  const td = el("td", null, "num");
  const lim = w.memory_limit_bytes;
  td.append(fmtBytes(w.memory_bytes) + " / " + (lim ? fmtBytes(lim) : "no limit"));
  if (lim && w.memory_bytes !== null) {
    const share = Math.min(1, w.memory_bytes / lim);
    td.append(` (${Math.round(share * 100)} %)`);  // the bar below repeats it as a pattern
    const bar = el("span", null, "bar"), fill = el("i");
    fill.style.width = (share * 100).toFixed(1) + "%";
    bar.appendChild(fill);
    bar.setAttribute("aria-hidden", "true");
    td.appendChild(bar);
  }
  return td;
}

function rowFor(w) {
  const tr = el("tr");
  tr.tabIndex = 0;
  tr.dataset.id = w.id;
  tr.dataset.cgroup = w.cgroup;
  const name = el("td", null, "name");
  name.title = w.cgroup;
  name.append(el("span", shortName(w.name || w.cgroup), "clip"), el("small", w.cgroup, "clip"));
  const cpu = fmtCores(w.cpu_cores) + (w.cpu_quota_cores ? " / " + fmtCores(w.cpu_quota_cores) : "");
  tr.append(name, el("td", w.runtime || "-"), el("td", w.image || "-"), el("td", cpu, "num"),
    memoryCell(w),
    el("td", fmtRate(w.io_read_bytes_per_s) + " / " + fmtRate(w.io_write_bytes_per_s), "num"),
    el("td", fmtRate(w.net_rx_bytes_per_s) + " / " + fmtRate(w.net_tx_bytes_per_s), "num"),
    el("td", fmtNum(w.pids), "num"), el("td", w.state, "state-" + w.state));
  return tr;
}

function renderTable() {
  const focused = document.activeElement && document.activeElement.closest
    && document.activeElement.closest("#rows tr");
  const focusId = focused ? focused.dataset.id : null;
  const rows = visibleRows();
  $("rows").replaceChildren(...rows.map(rowFor));
  $("count").textContent = `(${rows.length} shown of ${ui.total})`;
  if (focusId !== null) {
    const again = [...$("rows").children].find((tr) => tr.dataset.id === focusId);
    if (again) again.focus({ preventScroll: true });
  }
  if (!ui.firstRender && ui.seq >= 0) {
    ui.firstRender = true;
    document.body.dataset.firstRenderMs = String(Math.round(performance.now()));
  }
}

async function loadWorkloads(force) {
  // Only the kinds on show travel: plain cgroups can be most of a host's workloads.
  const kinds = $("kind").value;
  const data = await getJSON("/api/v1/ui/workloads" + (kinds ? "?kind=" + kinds : ""));
  ui.interval = data.interval_s;
  ui.age = data.snapshot_age_s;
  if (data.snapshot_seq === ui.seq && !force) return false;
  ui.seq = data.snapshot_seq;
  ui.rows = data.workloads;
  ui.total = data.total;
  document.body.dataset.seq = String(ui.seq);
  renderTable();
  return true;
}

function setSort(th) {
  const key = th.dataset.key;
  ui.sortDir = ui.sortKey === key ? -ui.sortDir : (th.classList.contains("num") ? -1 : 1);
  ui.sortKey = key;
  for (const h of document.querySelectorAll("#table th")) h.removeAttribute("aria-sort");
  th.setAttribute("aria-sort", ui.sortDir > 0 ? "ascending" : "descending");
  renderTable();
}

// -- workload view ------------------------------------------------------------------------
function chartSpecs(h) {
  const s = h.series;
  const pct = (v) => v.toFixed(v < 10 ? 1 : 0) + "%";
  return [
    { title: "CPU (cores)", format: fmtCores, series: [{ label: "used", values: s.cpu_cores }],
      limit: { label: "quota", value: h.cpu_quota_cores } },
    { title: "Memory", format: fmtBytes, series: [{ label: "current", values: s.memory_bytes }],
      limit: { label: "limit", value: h.memory_limit_bytes } },
    { title: "IO", format: fmtRate, series: [{ label: "read", values: s.io_read_bytes_per_s },
      { label: "write", values: s.io_write_bytes_per_s }] },
    { title: "Network", format: fmtRate, series: [{ label: "receive", values: s.net_rx_bytes_per_s },
      { label: "transmit", values: s.net_tx_bytes_per_s }] },
    { title: "Pressure (PSI some, avg10)", format: pct, series: [
      { label: "cpu", values: s.psi_cpu_some_avg10 }, { label: "memory", values: s.psi_memory_some_avg10 },
      { label: "io", values: s.psi_io_some_avg10 }] },
  ];
}

function eventItem(e) {
  const li = el("li", null, "sev-" + e.severity);
  li.dataset.type = e.type;
  li.dataset.id = String(e.id);
  if (e.container) li.dataset.cgroup = e.container.cgroup;
  const who = e.container ? shortName(e.container.name || e.container.cgroup) : "agent";
  const details = Object.entries(e.fields || {}).filter(([, v]) => typeof v !== "object")
    .slice(0, 4).map(([k, v]) => `${k}=${v}`).join(" ");
  li.append(el("span", fmtTime(e.ts_ns) + " "), el("span", e.severity.toUpperCase(), "sev"),
    el("strong", e.type), " " + who + (details ? ": " + details : ""));
  li.title = e.container ? e.container.cgroup : "";
  return li;
}

async function refreshDetail() {
  const id = ui.openId;
  if (id === null) return;
  const h = await getJSON("/api/v1/history/" + pathOf(id));
  if (ui.openId !== id) return;
  const charts = $("charts");
  const specs = chartSpecs(h);
  while (charts.children.length < specs.length) charts.appendChild(el("figure"));
  specs.forEach((spec, i) => window.drawChart(charts.children[i], { ...spec, t: h.t }));
}

async function openDetail(id) {
  ui.openId = id;
  ui.returnFocus = id;
  const dlg = $("detail");
  $("charts").replaceChildren();
  $("detail-ns").replaceChildren();
  $("detail-events").replaceChildren();
  $("detail-title").textContent = id;
  dlg.hidden = false;
  $("detail-title").focus();
  try {
    const [w, ev] = await Promise.all([
      getJSON("/api/v1/containers/" + pathOf(id)),
      getJSON("/api/v1/events?limit=50&container=" + encodeURIComponent(id)),
    ]);
    if (ui.openId !== id) return;
    $("detail-title").textContent = shortName(w.name || w.cgroup);
    $("detail-ident").textContent = [w.kind, w.runtime, w.cgroup, w.id !== w.cgroup ? "id " + w.id : "",
      w.init_pid ? "init pid " + w.init_pid : ""].filter(Boolean).join(" \u00B7 ");
    const ns = Object.entries(w.namespaces || {});
    $("detail-ns").replaceChildren(...(ns.length ? ns.map(([k, v]) => {
      const d = el("div");
      d.append(el("dt", k), el("dd", String(v)));
      return d;
    }) : [el("p", "none known (no init process)", "muted")]));
    $("detail-events").replaceChildren(...ev.events.slice().reverse().map(eventItem));
    if (!ev.events.length) $("detail-events").appendChild(el("li", "no events", "muted"));
    await refreshDetail();
  } catch (e) {
    $("detail-ident").textContent = "Not available: " + e.message;
  }
}

function closeDetail() {
  if (ui.openId === null) return;
  const id = ui.openId;
  ui.openId = null;
  $("detail").hidden = true;
  const row = [...$("rows").children].find((tr) => tr.dataset.id === id);
  if (row) row.focus();
}

// -- events pane --------------------------------------------------------------------------
function addEvent(e) {
  if (e.id <= ui.eventsLastId) return;
  ui.eventsLastId = e.id;
  const list = $("event-list");
  list.prepend(eventItem(e));
  while (list.children.length > MAX_EVENTS) list.lastChild.remove();
  if (ui.openId !== null && e.container && e.container.id === ui.openId) {
    $("detail-events").prepend(eventItem(e));
  }
}

async function startEvents() {
  const status = $("events-status");
  try {
    const page = await getJSON("/api/v1/events?limit=50");
    for (const e of page.events) addEvent(e);
  } catch (e) { status.textContent = "(history unavailable)"; }
  const src = new EventSource("/api/v1/events/stream?since=" + ui.eventsLastId);
  src.onopen = () => { status.textContent = "(live)"; };
  src.onerror = () => { status.textContent = "(reconnecting)"; };
  src.onmessage = (m) => addEvent(JSON.parse(m.data));
}

// -- billing ------------------------------------------------------------------------------
async function loadBilling() {
  try {
    const b = await getJSON("/api/v1/billing/top?n=10");
    const iso = (s) => new Date(s * 1000).toISOString().slice(0, 16).replace("T", " ");
    $("billing-period").textContent = `${iso(b.period_start)} to ${iso(b.period_end)} UTC (open), by CPU`;
    $("billing-rows").replaceChildren(...b.top.map((r) => {
      const tr = el("tr");
      const name = el("td", shortName(r.name));
      name.title = r.id;
      tr.append(name, el("td", (r.cpu_usec / 3.6e9).toFixed(4), "num"),
        el("td", (r.memory_byte_seconds / 1073741824 / 3600).toFixed(4), "num"),
        el("td", fmtBytes(r.io_read_bytes) + " / " + fmtBytes(r.io_write_bytes), "num"),
        el("td", fmtBytes(r.net_rx_bytes) + " / " + fmtBytes(r.net_tx_bytes), "num"));
      return tr;
    }));
  } catch (e) {
    $("billing-period").textContent = "Not available: " + e.message;
  }
}

// -- wiring -------------------------------------------------------------------------------
async function tick() {
  try {
    const changed = await loadWorkloads();
    if (changed) await refreshDetail();
  } catch (e) { /* shown by the health line */ }
  await loadHealth();
  // Next fetch just after the next cycle is due (by the agent's clock, not the browser's).
  const wait = ui.interval - (ui.age || 0) % ui.interval + 0.3;
  setTimeout(tick, Math.max(300, wait * 1000));
}

function wire() {
  for (const th of document.querySelectorAll("#table th")) {
    th.querySelector("button").addEventListener("click", () => setSort(th));
  }
  $("filter").addEventListener("input", renderTable);
  $("kind").addEventListener("change", () => loadWorkloads(true).catch(() => {}));
  const rows = $("rows");
  rows.addEventListener("click", (ev) => {
    const tr = ev.target.closest("tr");
    if (tr) openDetail(tr.dataset.id);
  });
  rows.addEventListener("keydown", (ev) => {
    const tr = ev.target.closest("tr");
    if (!tr) return;
    if (ev.key === "Enter" || ev.key === " ") { ev.preventDefault(); openDetail(tr.dataset.id); }
    if (ev.key === "ArrowDown" && tr.nextElementSibling) { ev.preventDefault(); tr.nextElementSibling.focus(); }
    if (ev.key === "ArrowUp" && tr.previousElementSibling) { ev.preventDefault(); tr.previousElementSibling.focus(); }
  });
  $("detail-close").addEventListener("click", closeDetail);
  document.addEventListener("keydown", (ev) => {
    if (ev.key === "Escape") closeDetail();
    // The view is modal: Tab stays on its one control until Esc or Close.
    if (ev.key === "Tab" && ui.openId !== null) { ev.preventDefault(); $("detail-close").focus(); }
  });
}

wire();
loadHost();
setInterval(loadHost, 60000);
startEvents();
loadBilling();
setInterval(loadBilling, 30000);
tick();
