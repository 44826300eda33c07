// spendgate dashboard: fetches the gateway's JSON API (same origin) and draws it.
// Login: a token in the URL fragment (#token=...) is exchanged once for an HttpOnly session
// cookie and removed from the address bar; the fragment never reaches a server or a log.
(function () {
"use strict";

const { barChart, hbars, donut, budgetBars, table, usd, h } = window.Charts;
const REFRESH_MS = 5000;
let state = { me: null, res: "minute", window: "month", overview: null };

const $ = (id) => document.getElementById(id);

async function api(path, opts) {
  const resp = await fetch(path, Object.assign({ credentials: "same-origin" }, opts || {}));
  if (resp.status === 401) throw Object.assign(new Error("unauthorized"), { status: 401 });
  const body = await resp.json().catch(() => ({}));
  if (!resp.ok) throw Object.assign(new Error(body.error || `HTTP ${resp.status}`), { status: resp.status });
  return body;
}

async function exchangeFragmentToken() {
  const m = /(?:^#|&)token=([^&]+)/.exec(location.hash);
  if (!m) return;
  const name = /(?:^#|&)name=([^&]+)/.exec(location.hash);
  history.replaceState(null, "", location.pathname + location.search);
  try {
    await api("/login", { method: "POST", headers: { "Content-Type": "application/json" },
      body: JSON.stringify({ token: decodeURIComponent(m[1]), name: name ? decodeURIComponent(name[1]) : "" }) });
  } catch (e) {
    $("login-error").textContent = "That token was not accepted.";
  }
}

function fmtTime(res) {
  return (iso) => {
    const d = new Date(iso);
    const p = (n) => String(n).padStart(2, "0");
    if (res === "day") return `${d.getUTCMonth() + 1}/${d.getUTCDate()}`;
    return `${p(d.getUTCHours())}:${p(d.getUTCMinutes())}`;
  };
}

function pill(v) { return h("span", { class: `pill ${v}` }, v); }
const money = (v) => (v === null || v === undefined ? "–" : usd(v));
const when = (v) => String(v || "").slice(0, 19).replace("T", " ");
// a row's trace (from the gateway's spendgate_trace_url template); only http(s) links are drawn
const traceLink = (url, row) => (typeof url === "string" && /^https?:\/\//.test(url)
  ? h("a", { href: url, target: "_blank", rel: "noopener noreferrer", title: row.trace_id || "" }, "trace")
  : "–");

function renderKpis(totals) {
  for (const el of document.querySelectorAll(".kpi")) {
    const t = totals[el.dataset.window];
    // API spend (invoiced per token) is the headline; subscription usage (covered by seats) is a
    // separate, labelled figure at list price, never added to it.
    el.querySelector(".value").textContent = usd(t.cost_usd, 2);
    el.querySelector(".sub").textContent =
      `API spend · ${(t.requests - (t.subscription_requests || 0)).toLocaleString()} requests` +
      (t.blocked ? ` · ${t.blocked} blocked` : "") +
      (Math.abs(t.charged_usd - t.cost_usd) > 0.005 ? ` · budgets charged ${usd(t.charged_usd, 2)}` : "");
    const subs = el.querySelector(".subs");
    if (subs) {
      subs.textContent = t.subscription_requests
        ? `+ subscription usage ${usd(t.notional_usd || 0, 2)} notional (${t.subscription_requests} requests, not invoiced)`
        : "";
    }
  }
}

function renderSeries() {
  const o = state.overview;
  if (!o) return;
  barChart($("series"), o.series[state.res], fmtTime(state.res));
}

function render(o) {
  state.overview = o;
  renderKpis(o.totals);
  renderSeries();
  const b = o.breakdowns;
  hbars($("by-user"), b.user, 10);
  donut($("by-model"), b.model);
  hbars($("by-workspace"), b.workspace, 8);
  hbars($("by-client"), b.client, 8);
  table($("latest"), o.latest, [
    ["ts", "time (UTC)", when], ["user", "user"], ["client", "client"], ["provider", "provider"], ["model", "model"],
    ["outcome", "outcome", pill], ["input_tokens", "in", (v) => (v || 0).toLocaleString(), true],
    ["output_tokens", "out", (v) => (v || 0).toLocaleString(), true], ["billing_basis", "basis", (v) => pill(v || "api")],
    ["cost_usd", "API cost", money, true],
    ["notional_usd", "notional", (v, r) => (r.billing_basis === "subscription" ? money(v) : "–"), true],
  ].concat(o.latest.some((r) => r.trace_url) ? [["trace_url", "trace", traceLink]] : []),
  "No requests yet: point a client at the gateway.");
  table($("subscriptions"), o.subscriptions || [], [["plan", "plan"], ["user", "user"], ["provider", "provider"],
    ["requests", "requests", null, true], ["notional_usd", "notional (list price)", money, true],
    ["charged_usd", "counted in budgets", money, true]],
    "No subscription (sign-in) traffic in this window.");
  table($("blocks"), o.blocks, [["ts", "time (UTC)", when], ["user", "user"], ["model", "model"], ["reason", "reason"]],
    "Nothing blocked in this window.");
  table($("unpriced"), o.unpriced, [["provider", "provider"], ["model", "model"], ["requests", "requests", null, true],
    ["charged_usd", "charged at fallback", money, true], ["last_seen", "last seen", when]], "Every model had a price.");
}

async function renderRequests() {
  const host = $("requests");
  if (!state.me.routes.includes("/api/requests")) {
    host.replaceChildren(h("p", { class: "empty" }, "Increase requests are not enabled on this gateway."));
    return;
  }
  let rows;
  try {
    rows = await api("/api/requests?status=pending");
  } catch (e) {
    host.replaceChildren(h("p", { class: "empty" }, `Requests unavailable: ${e.message}`));
    return;
  }
  const approve = state.me.post_routes.find((p) => p.includes("approve"));
  const deny = state.me.post_routes.find((p) => p.includes("deny"));
  const act = (route, row, extra) => async () => {
    try {
      await api(route, { method: "POST", headers: { "Content-Type": "application/json", "X-Spendgate": "1" },
        body: JSON.stringify(Object.assign({ id: row.id }, extra ? extra() : {})) });
    } catch (e) { alert(e.message); }
    renderRequests();
  };
  const cols = [["requester", "who"], ["scope", "scope"], ["window", "window"], ["amount_usd", "asks", money, true],
    ["reason", "why", null, "wrap"]];
  if (state.me.approver && approve && deny) {
    cols.push(["id", "", (id, row) => {
      if (!row.can_decide) return h("span", { class: "empty" }, "");  // the server's rule: not yours to decide
      const why = h("input", { placeholder: "reason to deny", size: 12 });
      return h("span", {}, h("button", { onclick: act(approve, row) }, "Approve"), " ",
        why, h("button", { onclick: act(deny, row, () => ({ reason: why.value })) }, "Deny"));
    }, "actions"]);
  }
  table(host, Array.isArray(rows) ? rows : rows.requests || [], cols, "No pending requests.");
}

// step-downs in force and rate limits: "you are on Sonnet until 00:00 because ..."
function renderRunway(rw) {
  const host = $("runway");
  const lines = (rw.step_downs || []).map((s) => h("p", { class: "step-down" },
    (state.me.admin ? `${s.scope}: ` : "You are on ") + s.message + "."));
  (rw.rate_limits || []).filter((b) => b.remaining === 0).forEach((b) => lines.push(
    h("p", { class: "rate-limited" }, `${b.scope} is at its rate limit (${b.limit} ${b.kind.replaceAll("_", " ")}).`)));
  host.replaceChildren(h("h2", {}, "Runway"), ...lines);
  host.hidden = lines.length === 0;
}

async function renderPlans() {
  const host = $("plans");
  if (!state.me.admin) {
    host.replaceChildren(h("p", { class: "empty" }, "Seat plans are shown in the organization view."));
    return;
  }
  let res;
  try {
    res = await api("/api/reconcile/plans?by=plan");
  } catch (e) {
    host.replaceChildren(h("p", { class: "empty" }, `Seat plans unavailable: ${e.message}`));
    return;
  }
  table(host, res.rows || [], [["plan", "plan"], ["vendor", "vendor"], ["seat_days", "seat-days", null, true],
    ["cost_usd", `seat cost ${res.first || ""} to ${res.last || ""}`, money, true]],
    "No seat plans in the policy (plans:).");
}

async function refresh() {
  try {
    const [o, budgets, rw] = await Promise.all([
      api(`/api/overview?window=${state.window}`),
      api("/api/budgets?top=8").catch(() => []),
      api("/api/runway").catch(() => ({})),
    ]);
    render(o);
    budgetBars($("budgets"), budgets, 8);
    renderRunway(rw);
    await renderRequests();
    await renderPlans();
    $("status").textContent = `updated ${new Date().toLocaleTimeString()}`;
    document.body.dataset.ready = "1";
  } catch (e) {
    if (e.status === 401) return showLogin();
    $("status").textContent = `error: ${e.message}`;
  }
}

function showLogin() {
  $("dash").hidden = true;
  $("login").hidden = false;
  $("status").textContent = "signed out";
}

async function main() {
  await exchangeFragmentToken();
  try {
    state.me = await api("/api/whoami");
  } catch (e) {
    return showLogin();
  }
  $("login").hidden = true;
  $("dash").hidden = false;
  $("who").textContent = state.me.admin ? `${state.me.name} (admin)` : state.me.name;
  $("scope").textContent = state.me.admin ? "· organization" : `· your spend (${state.me.name})`;
  for (const b of document.querySelectorAll("#series-tabs button")) {
    b.addEventListener("click", () => {
      state.res = b.dataset.res;
      document.querySelectorAll("#series-tabs button").forEach((x) => x.classList.toggle("active", x === b));
      renderSeries();
    });
  }
  $("window").addEventListener("change", (ev) => { state.window = ev.target.value; refresh(); });
  await refresh();
  setInterval(refresh, REFRESH_MS);
}

document.addEventListener("DOMContentLoaded", main);
})();
