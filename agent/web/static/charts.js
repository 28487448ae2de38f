// Small SVG line charts for the workload view: no library. Each series is told apart by its
// line pattern (solid, dashed, dotted) and named in a text legend, so colour is never needed.
"use strict";
const SVG_NS = "http://www.w3.org/2000/svg";
const W = 400, H = 150, PAD_L = 52, PAD_R = 8, PAD_T = 8, PAD_B = 18;

function svgEl(name, attrs) {
  const el = document.createElementNS(SVG_NS, name);
  for (const [k, v] of Object.entries(attrs || {})) el.setAttribute(k, String(v));
  return el;
}

function linePath(t, values, x, y) {
  // A gap (null) in the data starts a new sub-path instead of drawing across it.
  let d = "", pen = false, points = 0;
  for (let i = 0; i < t.length; i++) {
    const v = values[i];
    if (v === null || v === undefined) { pen = false; continue; }
    d += (pen ? "L" : "M") + x(t[i]).toFixed(1) + " " + y(v).toFixed(1);
    pen = true; points++;
  }
  return { d, points };
}

function legendSample(cls) {
  const s = svgEl("svg", { viewBox: "0 0 28 8", "aria-hidden": "true" });
  s.appendChild(svgEl("line", { x1: 0, y1: 4, x2: 28, y2: 4, class: cls }));
  return s;
}

// spec: {title, format(v) -> text, t: [epoch s], series: [{label, values}], limit: {label, value}|null}
function drawChart(figure, spec) {
  figure.replaceChildren();
  const cap = document.createElement("figcaption");
  cap.textContent = spec.title;
  figure.appendChild(cap);
  const t = spec.t;
  let max = 0;
  for (const s of spec.series) for (const v of s.values) if (v !== null && v > max) max = v;
  if (spec.limit && spec.limit.value !== null) max = Math.max(max, spec.limit.value);
  if (max <= 0) max = 1;
  max *= 1.1;
  const t0 = t.length ? t[0] : 0, t1 = t.length > 1 ? t[t.length - 1] : t0 + 1;
  const x = (v) => PAD_L + (v - t0) / (t1 - t0 || 1) * (W - PAD_L - PAD_R);
  const y = (v) => PAD_T + (1 - v / max) * (H - PAD_T - PAD_B);
  const svg = svgEl("svg", { viewBox: `0 0 ${W} ${H}`, role: "img" });
  const summary = spec.series.map((s) => {
    const last = [...s.values].reverse().find((v) => v !== null);
    return `${s.label} ${last === undefined ? "no data" : spec.format(last)}`;
  }).join(", ");
  svg.setAttribute("aria-label", `${spec.title}: ${summary}`);
  for (const f of [0, 0.5, 1]) {
    const gy = y(max / 1.1 * f);
    svg.appendChild(svgEl("line", { x1: PAD_L, x2: W - PAD_R, y1: gy, y2: gy, class: "grid" }));
    const label = svgEl("text", { x: PAD_L - 4, y: gy + 3, "text-anchor": "end" });
    label.textContent = spec.format(max / 1.1 * f);
    svg.appendChild(label);
  }
  const span = svgEl("text", { x: W - PAD_R, y: H - 4, "text-anchor": "end" });
  span.textContent = t.length > 1 ? `last ${Math.round((t1 - t0) / 60 * 10) / 10} min` : "waiting for data";
  svg.appendChild(span);
  const legend = document.createElement("div");
  legend.className = "legend";
  let total = 0;
  spec.series.forEach((s, i) => {
    const { d, points } = linePath(t, s.values, x, y);
    const path = svgEl("path", { d: d || "M0 0", class: "s" + i, "data-series": s.label, "data-points": points });
    svg.appendChild(path);
    total += points;
    const item = document.createElement("span");
    item.append(legendSample("s" + i), " " + s.label);
    legend.appendChild(item);
  });
  if (spec.limit && spec.limit.value !== null) {
    const ly = y(spec.limit.value);
    svg.appendChild(svgEl("line", { x1: PAD_L, x2: W - PAD_R, y1: ly, y2: ly, class: "limit", "data-limit": spec.limit.value }));
    const item = document.createElement("span");
    item.append(legendSample("limit"), ` ${spec.limit.label} ${spec.format(spec.limit.value)}`);
    legend.appendChild(item);
  }
  svg.dataset.points = String(total);
  figure.append(svg, legend);
}
window.drawChart = drawChart;
