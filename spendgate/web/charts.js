// Small hand-written SVG charts for the spendgate dashboard: no libraries, no network.
// Everything that comes from data goes in via textContent / attributes, never as markup.
(function () {
"use strict";

const SVGNS = "http://www.w3.org/2000/svg";
const PALETTE = ["#6ea8fe", "#8bd3c7", "#f5b84b", "#c792ea", "#ef6a6a", "#57c785", "#ff9e64", "#7dcfff", "#bb9af7", "#9ece6a"];

function svg(tag, attrs, parent) {
  const el = document.createElementNS(SVGNS, tag);
  for (const [k, v] of Object.entries(attrs || {})) el.setAttribute(k, String(v));
  if (parent) parent.appendChild(el);
  return el;
}

function h(tag, attrs, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (k === "class") el.className = v;
    else if (k.startsWith("on")) el.addEventListener(k.slice(2), v);
    else el.setAttribute(k, v);
  }
  for (const c of children) if (c !== null && c !== undefined) el.append(c instanceof Node ? c : String(c));
  return el;
}

// USD for people, with spendgate's one rounding rule (spendgate/money.py): round half to even on
// the amount's exact decimal value. The API sends the ledger's DECIMAL as a JSON number, whose
// shortest decimal form (String(v)) is that value; toLocaleString would round the binary double
// (or half-up), so $0.03435 could show as $0.0343 here and $0.0344 in the CLI.
function plainDecimal(v) {
  const s = String(Math.abs(v));
  const m = s.match(/^(\d+)(?:\.(\d+))?e([+-]\d+)$/);
  if (!m) return s;
  const frac = m[2] || "";
  const digits = (m[1] + frac).replace(/^0+(?=\d)/, "");
  const exp = Number(m[3]) - frac.length;  // value = digits * 10^exp
  if (exp >= 0) return digits + "0".repeat(exp);
  const padded = digits.padStart(-exp + 1, "0");
  return padded.slice(0, padded.length + exp) + "." + padded.slice(padded.length + exp);
}

function roundHalfEven(v, places) {
  const [ip, fp0 = ""] = plainDecimal(v).split(".");
  const fp = fp0.padEnd(places + 1, "0");
  const kept = ip + fp.slice(0, places), rest = fp.slice(places);
  const tie = rest[0] === "5" && /^0*$/.test(rest.slice(1));
  const up = rest[0] > "5" || (rest[0] === "5" && !tie) || (tie && Number(kept[kept.length - 1]) % 2 === 1);
  const n = (BigInt(kept) + (up ? 1n : 0n)).toString().padStart(places + 1, "0");
  return { int: n.slice(0, n.length - places), frac: n.slice(n.length - places) };
}

// digits: how many places; default 2 from $1 up (and for 0), 4 below.
function usd(x, digits) {
  const v = Number(x || 0);
  if (!Number.isFinite(v)) return "–";
  if (digits === undefined) digits = v !== 0 && Math.abs(v) < 1 ? 4 : 2;
  const r = roundHalfEven(v, digits);
  const neg = v < 0 && /[1-9]/.test(r.int + r.frac);
  return (neg ? "-$" : "$") + r.int.replace(/\B(?=(\d{3})+(?!\d))/g, ",") + (digits ? "." + r.frac : "");
}

// Places that show 1% of a limit (2..6), as money.places_for: a $0.05 budget reads $0.0460 of $0.0500.
function placesFor(limit) {
  const d = Math.abs(Number(limit || 0)) / 100;
  if (!(d > 0)) return 2;
  return Math.max(2, Math.min(6, -Math.floor(Math.log10(d) + 1e-12)));
}

// A "nice" upper bound for an axis: 1, 2, 2.5 or 5 times a power of ten.
function niceMax(v) {
  if (!(v > 0)) return 1;
  const p = Math.pow(10, Math.floor(Math.log10(v)));
  for (const m of [1, 2, 2.5, 5, 10]) if (v <= m * p) return m * p;
  return 10 * p;
}

// Vertical bar chart of spend per time bucket; points: [{t, cost_usd, requests, blocked}].
function barChart(host, points, labelOf) {
  host.replaceChildren();
  const W = 1000, H = 240, L = 64, B = 26, T = 10, R = 8;
  const root = svg("svg", { viewBox: `0 0 ${W} ${H}`, preserveAspectRatio: "none", role: "img" }, host);
  const defs = svg("defs", {}, root);
  const grad = svg("linearGradient", { id: "barfill", x1: 0, y1: 0, x2: 0, y2: 1 }, defs);
  svg("stop", { offset: "0%", "stop-color": "#8bd3c7" }, grad);
  svg("stop", { offset: "100%", "stop-color": "#6ea8fe" }, grad);
  const max = niceMax(Math.max(0, ...points.map((p) => p.cost_usd)));
  const plotW = W - L - R, plotH = H - T - B;
  for (let i = 0; i <= 4; i++) {
    const y = T + plotH - (plotH * i) / 4;
    svg("line", { x1: L, x2: W - R, y1: y, y2: y, class: "gridline" }, root);
    svg("text", { x: L - 6, y: y + 4, "text-anchor": "end", class: "axis" }, root).textContent = usd((max * i) / 4, max < 1 ? 3 : 0);
  }
  const n = Math.max(points.length, 1), slot = plotW / n, bw = Math.max(1, slot * 0.78);
  const every = Math.ceil(n / 8);
  points.forEach((p, i) => {
    const x = L + i * slot + (slot - bw) / 2;
    const hgt = (p.cost_usd / max) * plotH;
    const bar = svg("rect", { x, y: T + plotH - hgt, width: bw, height: Math.max(hgt, p.cost_usd > 0 ? 1 : 0), class: "bar", rx: 2 }, root);
    svg("title", {}, bar).textContent = `${labelOf(p.t)}: ${usd(p.cost_usd)} over ${p.requests} requests` + (p.blocked ? `, ${p.blocked} blocked` : "");
    if (p.blocked) svg("rect", { x, y: T + plotH - 3, width: bw, height: 3, class: "bar blocked" }, root);
    if (i % every === 0) svg("text", { x: x + bw / 2, y: H - 8, "text-anchor": "middle", class: "axis" }, root).textContent = labelOf(p.t);
  });
  svg("line", { x1: L, x2: W - R, y1: T + plotH, y2: T + plotH, stroke: "#3a4266" }, root);
  root.setAttribute("data-points", String(points.length));
  return root;
}

// Horizontal bars, biggest first; rows: [{group, cost_usd, requests}].
function hbars(host, rows, limit) {
  host.replaceChildren();
  const shown = rows.slice(0, limit || 8);
  if (!shown.length) { host.append(h("p", { class: "empty" }, "No spend in this window yet.")); return; }
  const max = Math.max(...shown.map((r) => r.cost_usd), 1e-12);
  for (const r of shown) {
    const fill = h("div", { class: "fill" });
    fill.style.width = `${Math.max(1, (100 * r.cost_usd) / max)}%`;
    const row = h("div", { class: "hbar" },
      h("span", { class: "label", title: r.group }, r.group),
      h("div", { class: "track" }, fill),
      h("span", { class: "num" }, `${usd(r.cost_usd)} · ${r.requests} req`));
    host.append(row);
  }
}

// Donut of spend shares with a legend; rows: [{group, cost_usd}].
function donut(host, rows) {
  host.replaceChildren();
  const total = rows.reduce((s, r) => s + r.cost_usd, 0);
  if (!(total > 0)) { host.append(h("p", { class: "empty" }, "No spend in this window yet.")); return; }
  const top = rows.slice(0, 7);
  const rest = rows.slice(7).reduce((s, r) => s + r.cost_usd, 0);
  if (rest > 0) top.push({ group: "other", cost_usd: rest });
  const root = svg("svg", { viewBox: "-1.1 -1.1 2.2 2.2", role: "img" }, host);
  let a = -Math.PI / 2;
  top.forEach((r, i) => {
    const frac = r.cost_usd / total;
    const color = PALETTE[i % PALETTE.length];
    if (frac >= 0.9999) {
      svg("circle", { cx: 0, cy: 0, r: 0.8, fill: "none", stroke: color, "stroke-width": 0.4 }, root);
    } else {
      const b = a + frac * 2 * Math.PI;
      const large = frac > 0.5 ? 1 : 0;
      const d = `M ${Math.cos(a)} ${Math.sin(a)} A 1 1 0 ${large} 1 ${Math.cos(b)} ${Math.sin(b)} ` +
        `L ${0.6 * Math.cos(b)} ${0.6 * Math.sin(b)} A 0.6 0.6 0 ${large} 0 ${0.6 * Math.cos(a)} ${0.6 * Math.sin(a)} Z`;
      const path = svg("path", { d, fill: color }, root);
      svg("title", {}, path).textContent = `${r.group}: ${usd(r.cost_usd)} (${(100 * frac).toFixed(1)}%)`;
      a = b;
    }
  });
  const label = svg("text", { x: 0, y: 0.1, "text-anchor": "middle", fill: "#e6e9f2", "font-size": 0.26 }, root);
  label.textContent = usd(total, 2);
  const legend = h("div", { class: "legend" });
  top.forEach((r, i) => {
    const sw = h("span", { class: "sw" });
    sw.style.background = PALETTE[i % PALETTE.length];
    legend.append(h("div", {}, sw, h("span", { class: "nm", title: r.group }, r.group),
      h("span", { class: "num" }, `${(100 * r.cost_usd / total).toFixed(0)}%`)));
  });
  host.append(legend);
}

// Budget utilisation bars; rows from /api/budgets, fullest first.
function budgetBars(host, rows, limit) {
  host.replaceChildren();
  // a zero limit is a budget that is already full (it blocks everything), as closest_to_cap says
  const used = (r) => (r.limit_usd > 0 ? (r.spent_usd + (r.reserved_usd || 0)) / r.limit_usd : 1);
  const ranked = rows.slice().sort((x, y) => used(y) - used(x)).slice(0, limit || 8);
  if (!ranked.length) { host.append(h("p", { class: "empty" }, "No budgets apply.")); return; }
  for (const r of ranked) {
    const u = used(r);
    const fill = h("div", { class: "fill" + (u >= 0.95 ? " bad" : u >= 0.8 ? " warn" : "") });
    fill.style.width = `${Math.min(100, Math.max(0.5, 100 * u))}%`;
    host.append(h("div", { class: "budget" },
      h("div", { class: "row" }, h("span", {}, `${r.scope} · ${r.window}`), h("span", {}, `${(100 * u).toFixed(1)}%`)),
      h("div", { class: "track" }, fill),
      h("div", { class: "meta" }, `${usd(r.spent_usd, placesFor(r.limit_usd))} of ${usd(r.limit_usd, placesFor(r.limit_usd))} · resets ${String(r.resets_at).slice(0, 16).replace("T", " ")} UTC`)));
  }
}

// A plain table; cols: [[key, title, formatter?, numeric?]].
function table(host, rows, cols, empty) {
  host.replaceChildren();
  if (!rows.length) { host.append(h("p", { class: "empty" }, empty || "Nothing yet.")); return; }
  const t = h("table", {});
  t.append(h("thead", {}, h("tr", {}, ...cols.map((c) => h("th", {}, c[1])))));
  const body = h("tbody", {});
  for (const r of rows) {
    body.append(h("tr", {}, ...cols.map((c) => {
      const v = c[2] ? c[2](r[c[0]], r) : r[c[0]];
      // c[3]: true for a number column, or a class name ("wrap": text wraps; "actions": controls, never clipped)
      const cls = c[3] === true ? "num" : c[3] || "";
      const cell = h("td", cls ? { class: cls } : {});
      cell.append(v instanceof Node ? v : String(v ?? "–"));
      return cell;
    })));
  }
  t.append(body);
  host.append(t);
}

window.Charts = { barChart, hbars, donut, budgetBars, table, usd, placesFor, h };
})();
