"use strict";
// The managers' page: every section asks the API for itself, in parallel, and draws what has arrived
// (each shows "loading…" until then), so the page is usable before the slowest call returns.
const $ = (id) => document.getElementById(id);
const fmt = (x, d = 0) => Number(x).toLocaleString("en-US", {maximumFractionDigits: d, minimumFractionDigits: d});
const esc = (s) => String(s ?? "").replace(/[&<>"]/g, (c) => ({"&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;"}[c]));
const cap = (s) => { const t = String(s ?? ""); return t.charAt(0).toUpperCase() + t.slice(1); };
const UNASSIGNED = "unassigned";
const TRENDS = {improving: ["▲", "improving"], declining: ["▼", "declining"], steady: ["▶", "steady"]};
const state = {forecast: null};
const sleep = (ms) => new Promise((done) => setTimeout(done, ms));
const refused = (e) => e.status === 401 || e.status === 403;

// The connection as the page knows it, for the line under the key: whether the key was accepted (any answer to it
// but 401/403), and from /readyz (no key needed) whether the server has scores yet. A freshly started server
// computes its first scores in the background (half a minute on the sample, minutes on a big CRM): the page says so and
// since when (the refresh's start from /readyz, else when the page began waiting), and every section that waits asks
// again the moment /readyz shows the scores.
let conn = null;

function newConnection() {
  const c = {accepted: false, refused: null, shown: false, settled: false, firstScores: false, since: null,
    started: null, failed: null, noModels: false};
  c.scored = new Promise((done) => { c.markScored = done; });
  return c;
}

function settle(c) {
  // /readyz has said what it will (scores there, or the refresh failed), or the page connected again: the waits
  // of the sections end now and later ones sleep their Retry-After (a busy server, not the first refresh)
  c.settled = true;
  c.firstScores = false;
  c.markScored();
}

async function api(path, patience = 300, waiting = null) {
  // a 503 with Retry-After (the first scored snapshot being built, or the server busy) is waited out, for up to
  // `patience` seconds in all, and for as long as /readyz says the first scores are still being computed: a
  // manager who opened the page then should see the figures arrive, not "retry in a minute"; `waiting(detail)`
  // is told what the server said meanwhile (a failed refresh names its reason), so the section does not just spin
  const start = Date.now(), c = conn;
  for (;;) {
    const r = await fetch(path, {headers: {"X-API-Key": $("key").value}});
    const body = await r.json().catch(() => ({}));
    if (c && c === conn) keyAnswered(r.status, body.detail);
    if (r.ok) return body;
    const wait = Math.min(Number(r.headers.get("Retry-After")), 10);
    const late = (Date.now() - start) / 1000 + wait > patience && !(c && c.firstScores);
    if (r.status !== 503 || !wait || late) {
      const e = new Error(body.detail || r.status);
      e.status = r.status;
      throw e;
    }
    if (waiting && body.detail) waiting(body.detail);
    await (c && !c.settled ? Promise.race([sleep(wait * 1000), c.scored]) : sleep(wait * 1000));
  }
}

function keyAnswered(status, detail) {
  if (status === 401 || status === 403) conn.refused = detail || String(status);
  else conn.accepted = true;
  banner();
}

async function watchReadiness(c) {
  // polls /readyz every 2 s while the server has no scored snapshot and its refresh has not failed
  while (c === conn && !c.settled) {
    const ready = await fetch("/readyz").then((r) => r.json()).catch(() => null);
    if (c !== conn || c.settled) return;
    if (c.refused) { settle(c); return; }  // nothing will be computed for a refused key
    const snap = ready && ready.snapshot;
    c.noModels = !!ready && !Object.keys(ready.models || {}).length;
    if (!snap || snap.snapshot_id != null || snap.status === "failed") {
      c.failed = snap && snap.snapshot_id == null && snap.status === "failed" ? snap.error || "unknown reason" : null;
      settle(c);
      banner();
      return;
    }
    if (!c.firstScores) { c.firstScores = true; c.since = new Date(); }
    const started = snap.refresh_started_at ? new Date(snap.refresh_started_at) : null;  // the server's refresh
    c.started = started && !Number.isNaN(started.getTime()) ? started : null;
    banner();
    await sleep(2000);
  }
}

function clock(t) { return t.toISOString().slice(11, 16) + " UTC"; }  // as the page's other times read

function banner() {
  // the line under the key while the worklist has not drawn its own (freshness() writes it then), and the
  // "loading…" line of each section still waiting
  for (const id of waits.keys()) showWait(id);
  if (!conn || conn.shown) return;
  if (conn.refused) {
    setState("freshness", `Not connected: the server did not accept this API key (${conn.refused}). ` +
      "Check the key and press Connect again.", "error");
  } else if (!conn.accepted) {
    setState("freshness", "Connecting…", "note loading");
  } else if (conn.firstScores) {
    const so = conn.started
      ? `(started ${clock(conn.started)}, ${ageText((Date.now() - conn.started) / 1000)} so far)`
      : `(waiting since ${clock(conn.since)}, ${ageText((Date.now() - conn.since) / 1000)} so far)`;
    setState("freshness", conn.noModels
      ? `Connected. The server is reading the CRM data for the first time ${so}; no model is trained yet, so the ` +
        "prioritised list will stay empty until an admin trains one."
      : `Connected. The first scores are being computed ${so}: the list appears here by itself when they are ` +
        "ready, no need to reload.");
  } else if (conn.failed) {
    setState("freshness", `Connected, but the server could not compute scores: ${conn.failed}`, "error");
  } else {
    setState("freshness", "Connected; no scored snapshot to show yet (see the prioritised list below).");
  }
}

const waits = new Map();  // the state line of each section still waiting -> what the server last said ("" if nothing)

function showWait(id) {
  const detail = waits.get(id);
  const first = conn && conn.firstScores && conn.accepted;
  const text = first ? `loading… waiting for the server's first ${conn.noModels ? "read of the data" : "scores"} (see above)`
    : detail ? `loading… the server says: ${detail}` : "loading…";
  setState(id, text, "note loading");
}

function waitingIn(id) {
  // shows "loading…" in the section whose state line is `id`; returns the `waiting` callback of api() for it
  waits.set(id, "");
  showWait(id);
  return (detail) => { if (waits.has(id)) { waits.set(id, detail); showWait(id); } };
}

function setState(id, text, cls = "note") {
  const el = $(id);
  el.className = cls;
  el.textContent = text;
  if (!cls.includes("loading")) waits.delete(id);  // an answer: no longer waiting
}

function failed(id, what, e) {
  // a refused key is said once, under the key field; each section then just says it has nothing
  if (refused(e)) setState(id, "Not loaded: the API key was not accepted (see above).", "note");
  else setState(id, `${what} not available: ${e.message}`, "error");
}

function fillSelect(sel, values) {
  if (sel.options.length > 1) return;
  for (const v of values) { const o = document.createElement("option"); o.value = v; o.textContent = v; sel.appendChild(o); }
}

function ageText(seconds) {
  const s = Math.max(0, seconds);
  if (s < 59.5) return `${Math.round(s)} s`;
  if (s < 5400) return `${Math.round(s / 60)} min`;
  if (s < 2 * 86400) return `${Math.round(s / 3600)} h`;
  return `${Math.round(s / 86400)} days`;
}

function when(iso) {
  // "2026-10-01 06:00 UTC": what a person reads, not an ISO timestamp with microseconds
  const t = new Date(iso);
  return Number.isNaN(t.getTime()) ? String(iso) : t.toISOString().slice(0, 16).replace("T", " ") + " UTC";
}

// The freshness line's snapshot and when the page received it: the line's "N min ago" is counted on from there
// every 30 s, so a page left open does not keep saying "20 s ago".
let fresh = null;
const FRESHNESS_TICK_MS = 30000;

function freshness(w) {
  // from the refresh job's snapshot when the API has one (refreshed_at, age_seconds), else the data's as_of.
  // A snapshot's refreshed_at is when its refresh started (the API says nothing of when it finished), so the line
  // says so rather than "refreshed" at that time
  const at = w.refreshed_at || w.as_of;
  fresh = {w, age: w.age_seconds ?? (Date.now() - Date.parse(at)) / 1000, received: Date.now()};
  if (conn) { conn.shown = true; settle(conn); }  // the list is here: nothing waits for first scores any more
  showFreshness();
}

function showFreshness() {
  if (!fresh) return;
  const {w} = fresh, age = fresh.age + (Date.now() - fresh.received) / 1000;
  const el = $("freshness");
  el.className = age > 86400 ? "stale" : "note";
  el.dataset.age = String(Math.round(age));
  const none = !w.items.length && w.missing.length ? " Nothing could be scored: see “Not shown” below." : "";
  el.textContent = (w.refreshed_at
    ? `${none ? "Refresh started" : "Scores computed by a refresh started"} ${when(w.refreshed_at)} (${ageText(age)} ago) ` +
      `from data as of ${when(w.as_of)}.`
    : `Data as of ${when(w.as_of)} (${ageText(age)} old); scores computed when first asked.`) + none;
}

function trendCell(it) {
  if (!it.trend) return "<td></td>";
  const [arrow, word] = TRENDS[it.trend] || ["·", it.trend];
  const cls = TRENDS[it.trend] ? `trend-${it.trend}` : "trend-none";
  const before = it.previous_score == null ? "" : ` (was ${fmt(it.previous_score * 100)})`;
  return `<td class="trend ${cls}" data-trend="${esc(it.trend)}" title="${esc(word + before)}">${arrow}</td>`;
}

function ownerCell(owner) {
  if (!owner || owner === UNASSIGNED) return `<td class="unassigned">unassigned</td>`;
  return `<td><span class="rep-link" data-rep="${esc(owner)}">${esc(owner)}</span></td>`;
}

function scoreCell(it) {
  // an account is ranked by the value it is expected to bring, not by a probability
  return it.kind === "account" ? `<td class="num" title="accounts are ranked by value">–</td>`
    : `<td class="num">${fmt(it.score * 100)}</td>`;
}

function whyCell(it) {
  // the two reasons a rep acts on first (the last contact, then stage or buying cycle); all of them on hover
  return `<td class="why" title="${esc(it.reasons.join("\n"))}">` +
    it.reasons.slice(0, 2).map((r) => `<div>${esc(r)}</div>`).join("") + "</td>";
}

function itemRow(it, i) {
  return `<tr data-owner="${esc(it.owner_id)}" data-kind="${esc(it.kind)}"><td>${i + 1}</td><td><span class="kind">${esc(it.kind)}</span></td>` +
    `<td title="${esc(it.id)}">${esc(it.name || it.id)}</td>${ownerCell(it.owner_id)}${scoreCell(it)}` +
    `${trendCell(it)}<td class="num">${fmt(it.expected_value)}</td><td class="num" title="effort ${fmt(it.effort, 1)}">${fmt(it.value_per_effort)}</td>` +
    `${whyCell(it)}</tr>`;
}

function effortsText(w) {
  // the efforts the ranking used and where they came from (measured on the export, a setting, or defaults)
  const e = w.efforts, unit = w.effort_unit;
  if (!e.length) return "";
  const deals = e.filter((x) => x.kind === "deal");
  const one = (k) => e.filter((x) => x.kind === k).map((x) => fmt(x.effort, x.effort % 1 ? 1 : 0))[0];
  const deal = deals.length === 1 && !deals[0].stage ? fmt(deals[0].effort, deals[0].effort % 1 ? 1 : 0)
    : "from " + deals.map((x) => `${esc(x.stage)} ${fmt(x.effort)}`).join(", ");
  const sources = new Set(e.map((x) => x.source));
  const how = sources.size === 1 && sources.has("data")
    ? `the median rep touches it took to win each, measured on your CRM data before ${when(w.as_of).slice(0, 10)}`
    : new Set(e.map((x) => x.rule)).size === 1 ? e[0].rule  // one reason for all (say, no deal won yet): said once
    : e.map((x) => `${x.kind}${x.stage ? " in " + x.stage : ""}: ${x.rule}`).join("; ");
  return `Effort per item, in ${esc(unit)}: lead ${one("lead")} · deal ${deal} · account ${one("account")} (${esc(how)}).`;
}

async function loadWorklist() {
  const q = new URLSearchParams({limit: "50"});
  if ($("owner").value) q.set("owner", $("owner").value);
  if ($("team").value) q.set("team", $("team").value);
  const waiting = waitingIn("worklist-state");
  try {
    const w = await api("/v1/worklist?" + q, 300, waiting);
    fillSelect($("owner"), w.owners); fillSelect($("team"), w.teams);
    freshness(w);
    $("missing").textContent = w.missing.length ? "Not shown: " + w.missing.join("; ") : "";
    $("efforts").textContent = w.items.length ? effortsText(w) : "";
    $("efforts").title = w.efforts.map((x) => `${x.kind}${x.stage ? " in " + x.stage : ""}: ${x.effort} (${x.rule})`).join("\n");
    $("per-effort").textContent = w.effort_unit === "rep touches" ? "value per rep touch" : "value per effort";
    $("worklist").querySelector("tbody").innerHTML = w.items.map(itemRow).join("");
    $("worklist").hidden = $("download").disabled = !w.items.length;  // a header without rows says nothing
    if (!w.items.length) {
      setState("worklist-state", w.missing.length ? "Nothing to show: no lead, deal or account could be scored."
        : "Nothing to show: no open lead, deal or account" + ($("owner").value || $("team").value ? " for this owner or team." : "."));
      return;
    }
    const valued = w.items.some((x) => x.expected_value > 0);  // a leads-only CRM has no deal amounts
    const order = valued ? `the most expected value per ${w.effort_unit === "rep touches" ? "rep touch" : "unit of effort"} first`
      : "the most likely first (the export has no deal amounts, so no expected value)";
    setState("worklist-state", `${w.items.length} item${w.items.length === 1 ? "" : "s"}, ${order}. Click an owner for their list.`);
  } catch (e) {
    failed("worklist-state", "Worklist", e);
    banner();  // the line under the key says what the connection is (a refused key, a failed refresh)
  }
}

function csvField(v) {
  // quoted; a cell a spreadsheet would run as a formula (=, +, -, @) is kept as text
  let s = String(v ?? "");
  if (/^[=+\-@]/.test(s)) s = "'" + s;
  return `"${s.replace(/"/g, '""')}"`;
}

async function downloadList() {
  // the list as filtered, up to 1,000 items, with rounded numbers and the reasons in one column
  const q = new URLSearchParams({limit: "1000"});
  if ($("owner").value) q.set("owner", $("owner").value);
  if ($("team").value) q.set("team", $("team").value);
  const w = await api("/v1/worklist?" + q);
  const head = ["rank", "kind", "name", "id", "owner", "team", "score", "trend", "expected value",
    `effort (${w.effort_unit})`, w.effort_unit === "rep touches" ? "value per rep touch" : "value per unit of effort",
    "reasons", "data as of", "scores refreshed"];
  const rows = w.items.map((it, i) => [i + 1, it.kind, it.name || "", it.id, it.owner_id || UNASSIGNED, it.team || "",
    it.kind === "account" ? "" : Math.round(it.score * 100), it.trend, Math.round(it.expected_value), it.effort,
    Math.round(it.value_per_effort), it.reasons.join(" | "), when(w.as_of), when(w.refreshed_at || w.as_of)]);
  const csv = [head, ...rows].map((r) => r.map(csvField).join(",")).join("\r\n") + "\r\n";
  const a = document.createElement("a");
  a.href = URL.createObjectURL(new Blob([csv], {type: "text/csv;charset=utf-8"}));
  a.download = `worklist-${String(w.as_of).slice(0, 10)}${$("owner").value ? "-" + $("owner").value : ""}.csv`;
  document.body.appendChild(a); a.click(); a.remove();
}

function repForecastLine(owner) {
  const g = state.forecast && state.forecast.groups.find((x) => x.group === owner);
  if (!g) return "";
  const won = g.won ? `won so far ${fmt(g.won)}, ` : "";
  return ` Forecast (${state.forecast.label}): ${won}expected ${fmt(g.expected)} (P10 ${fmt(g.p10)} – P90 ${fmt(g.p90)}).`;
}

async function openRep(owner) {
  $("drill").hidden = false;
  $("drill-title").textContent = `${owner}: the deals and leads behind the number`;
  setState("drill-summary", "loading…", "note loading");
  $("drill-items").querySelector("tbody").innerHTML = "";
  try {
    const w = await api("/v1/worklist?" + new URLSearchParams({owner, limit: "200"}));
    const count = (k) => w.items.filter((i) => i.kind === k).length;
    const total = w.items.reduce((a, i) => a + i.expected_value, 0);
    $("drill-items").querySelector("tbody").innerHTML = w.items.map((it) =>
      `<tr data-kind="${esc(it.kind)}"><td><span class="kind">${esc(it.kind)}</span></td><td title="${esc(it.id)}">${esc(it.name || it.id)}</td>` +
      `${scoreCell(it)}${trendCell(it)}<td class="num">${fmt(it.expected_value)}</td>${whyCell(it)}</tr>`).join("");
    setState("drill-summary", `${count("deal")} deals, ${count("lead")} leads, ${count("account")} accounts; ` +
      `expected value ${fmt(total)}.` + repForecastLine(owner));
  } catch (e) { failed("drill-summary", "The rep's list", e); }
  $("drill").scrollIntoView({block: "nearest"});
}

function normaliseForecast(f, period) {
  if (period === "rolling") {
    return {label: `next ${f.horizon_days} days`, model: f.model, as_of: f.as_of, total: null, teams: [],
      groups: f.groups.map((g) => ({group: g.group, is_rep: g.group !== UNASSIGNED, won: 0, expected: g.expected_bookings,
        p10: g.p10, p50: g.p50, p90: g.p90, crm: g.weighted_pipeline}))};
  }
  const one = (g) => ({group: g.group, is_rep: g.is_rep, won: g.won_so_far, expected: g.expected_total, p10: g.p10,
    p50: g.p50, p90: g.p90, crm: g.won_so_far + g.weighted_pipeline, commit: g.crm_commit, best: g.crm_best_case});
  const end = new Date(Date.parse(f.end) - 86400000).toISOString().slice(0, 10);
  return {label: `${period} ${f.start.slice(0, 10)} to ${end}`, model: f.model, as_of: f.as_of, total: one(f.total),
    teams: (f.teams || []).map(one), groups: f.groups.map(one), newDeals: f.new_deals, categories: f.has_crm_categories};
}

function forecastChart(groups) {
  const w = 720, row = 24, left = 150, top = 22;
  const max = Math.max(1, ...groups.map((g) => Math.max(g.p90, g.crm))) * 1.05;
  const x = (v) => left + (w - left - 20) * v / max;
  let s = `<svg id="forecast-svg" width="${w}" height="${top + row * groups.length + 30}" role="img" aria-label="forecast by rep">`;
  s += `<text x="${left}" y="12" font-size="10">dark: won so far · bar: P10–P90 · tick: P50 · dot: expected · ◇: CRM (won + weighted pipeline)</text>`;
  groups.forEach((g, i) => {
    const y = top + i * row, label = g.is_rep ? `<text class="rep-link" data-rep="${esc(g.group)}" x="0" y="${y + 14}" font-size="12" fill="#1a5bb8">${esc(g.group)}</text>`
      : `<text x="0" y="${y + 14}" font-size="12" fill="#777" font-style="italic">${esc(g.group)} (no owner)</text>`;
    s += `<g class="${g.is_rep ? "rep" : "no-rep"}" data-rep="${esc(g.group)}">${label}`;
    if (g.won > 0) s += `<rect class="won" x="${left}" y="${y + 6}" width="${x(g.won) - left}" height="10" fill="#2c4f7c"/>`;
    s += `<rect class="interval" x="${x(g.p10)}" y="${y + 4}" width="${Math.max(1, x(g.p90) - x(g.p10))}" height="14" fill="#9cc0ef" fill-opacity="0.8">` +
      `<title>${esc(g.group)}: won ${fmt(g.won)} · P10 ${fmt(g.p10)} · P50 ${fmt(g.p50)} · P90 ${fmt(g.p90)} · expected ${fmt(g.expected)}</title></rect>`;
    s += `<line class="p50" x1="${x(g.p50)}" x2="${x(g.p50)}" y1="${y + 2}" y2="${y + 20}" stroke="#123" stroke-width="2"/>`;
    s += `<circle cx="${x(g.expected)}" cy="${y + 11}" r="3" fill="#d9534f"/>`;
    s += `<text x="${x(g.crm) - 4}" y="${y + 15}" font-size="11" fill="#555">◇</text></g>`;
  });
  const base = top + row * groups.length + 4, step = Math.pow(10, Math.floor(Math.log10(max / 4)));
  const tick = step * (max / step / 4 > 5 ? 5 : max / step / 4 > 2 ? 2 : 1);
  s += `<line x1="${left}" x2="${w - 20}" y1="${base}" y2="${base}" stroke="#999"/>`;
  for (let v = 0; v <= max; v += tick) {
    s += `<line x1="${x(v)}" x2="${x(v)}" y1="${base}" y2="${base + 4}" stroke="#999"/>`;
    s += `<text x="${x(v)}" y="${base + 16}" font-size="10" text-anchor="middle">${fmt(v)}</text>`;
  }
  return s + "</svg>";
}

function teamRows(fc) {
  const rows = [...fc.teams, ...(fc.total ? [{...fc.total, group: "company"}] : [])];
  if (!rows.length) return "";
  const cat = fc.categories;
  const head = `<tr><th>team</th><th class="num">won so far</th><th class="num">expected</th><th class="num">P10</th><th class="num">P90</th>` +
    `<th class="num">CRM: won + weighted</th>${cat ? '<th class="num">CRM commit</th><th class="num">CRM best case</th>' : ""}</tr>`;
  return head + rows.map((g) => `<tr data-team="${esc(g.group)}"><td>${esc(g.group)}</td><td class="num">${fmt(g.won)}</td>` +
    `<td class="num">${fmt(g.expected)}</td><td class="num">${fmt(g.p10)}</td><td class="num">${fmt(g.p90)}</td>` +
    `<td class="num">${fmt(g.crm)}</td>${cat ? `<td class="num">${fmt(g.won + (g.commit || 0))}</td><td class="num">${fmt(g.won + (g.commit || 0) + (g.best || 0))}</td>` : ""}</tr>`).join("");
}

async function loadForecast() {
  const period = $("period").value;
  const waiting = waitingIn("forecast-note");
  try {
    const q = period === "rolling" ? "by=owner_id&sims=2000" : `period=${period}&by=owner_id&sims=2000`;
    const fc = normaliseForecast(await api("/v1/forecast?" + q, 300, waiting), period);
    state.forecast = fc;
    const reps = fc.groups.filter((g) => g.is_rep).length;
    const total = fc.total ? fc.total.expected : fc.groups.reduce((a, g) => a + g.expected, 0);
    const band = fc.total ? ` (P10 ${fmt(fc.total.p10)} – P90 ${fmt(fc.total.p90)})` : "";
    setState("forecast-note", `Bookings expected, ${fc.label}: ${fmt(total)}${band}; ${reps} reps` +
      `${fc.groups.some((g) => !g.is_rep) ? " and deals without an owner" : ""}; model ${fc.model.name} v${fc.model.version}.` +
      (fc.newDeals ? ` Deals not yet created: ${fc.newDeals}.` : ""));
    $("forecast-chart").innerHTML = forecastChart(fc.groups);
    $("forecast-teams").innerHTML = teamRows(fc);
  } catch (e) { failed("forecast-note", "Forecast", e); }
}

function funnelLabel(st) {
  const decided = st.moved_on + st.lost;
  const conv = st.conversion == null ? "none decided yet" : `${fmt(st.conversion * 100)}% of ${fmt(decided)} decided moved on`;
  return `${fmt(st.entered)} entered: ${fmt(st.moved_on)} on, ${fmt(st.lost)} lost, ${fmt(st.still_open)} open · ${conv}`;
}

function funnelChart(stages, bottleneck) {
  const w = 920, row = 30, left = 110, max = Math.max(1, ...stages.map((s) => s.entered));
  let s = `<svg id="funnel-svg" width="${w}" height="${row * stages.length + 8}" role="img" aria-label="funnel">`;
  stages.forEach((st, i) => {
    const y = i * row + 4, bw = (w - left - 480) * st.entered / max, hot = st.stage === bottleneck;  // room for the label
    s += `<text x="0" y="${y + 16}" font-size="12"${hot ? ' font-weight="bold"' : ""}>${esc(st.stage)}</text>`;
    s += `<rect class="stage-bar" data-stage="${esc(st.stage)}" x="${left}" y="${y + 3}" width="${bw}" height="20" fill="${hot ? "#d9534f" : "#3b7dd8"}">` +
      `<title>${esc(st.stage)}: ${fmt(st.entered)} entered</title></rect>`;
    s += `<text class="stage-label" x="${left + bw + 6}" y="${y + 16}" font-size="11">${funnelLabel(st)}${hot ? " · bottleneck" : ""}</text>`;
  });
  return s + "</svg>";
}

async function loadFunnel() {
  try {
    const f = await api("/v1/funnel", 300, waitingIn("bottleneck"));
    setState("bottleneck", `Bottleneck: ${f.bottleneck}.`, "");
    $("funnel-summary").textContent = f.summary;
    $("funnel-chart").innerHTML = funnelChart(f.overall, f.bottleneck);
    $("funnel-body").hidden = false;  // the table and its note, hidden while there is no funnel to show
    $("funnel").querySelector("tbody").innerHTML = f.overall.map((r) =>
      `<tr${r.stage === f.bottleneck ? ' class="bottleneck"' : ""}><td>${esc(r.stage)}</td><td class="num">${fmt(r.entered)}</td>` +
      `<td class="num">${fmt(r.moved_on)}</td><td class="num">${fmt(r.lost)}</td><td class="num">${fmt(r.still_open)}</td>` +
      `<td class="num">${r.conversion == null ? "" : fmt(r.conversion * 100) + "%"}</td>` +
      `<td class="num">${r.median_days == null ? "" : fmt(r.median_days)}</td><td class="num">${fmt(r.value_lost)}</td></tr>`).join("");
  } catch (e) {
    $("funnel-body").hidden = true;
    failed("bottleneck", "Funnel", e);
  }
}

function metricOf(metrics, ...names) {
  for (const n of names) if (metrics[n] != null) return metrics[n];
  return null;
}

function served(models) {
  // per task, the version this API serves (else the champion): its evaluation metrics at training
  const out = {};
  for (const m of models) {
    const pick = out[m.name];
    if (!pick || (m.loaded && !pick.loaded) || (!pick.loaded && m.aliases.includes("champion"))) out[m.name] = m;
  }
  return Object.values(out);
}

function accuracyBlock(m, perf) {
  // a deal model's figures are those of P(won), what the list ranks deals by
  const auc = metricOf(m.metrics, "eval_roc_auc", "eval_win_roc_auc", "eval_auc");
  const cal = metricOf(m.metrics, "eval_calibration_error", "eval_win_calibration_error", "eval_ece");
  const brier = metricOf(m.metrics, "eval_brier", "eval_win_brier");
  const show = (label, v, d = 3) => `<span class="metric">${label} <b>${v == null ? "–" : fmt(v, d)}</b></span>`;
  let live = "<span class='note'>live: not available</span>";
  if (perf) {
    const v = perf.versions.find((x) => x.version === m.version) || perf.versions[0];
    live = !v || !v.n ? `<span class="note">live: no reported outcomes yet (POST /v1/outcomes)</span>`
      : show(`live AUC (${fmt(v.n)} outcomes)`, v.roc_auc) + show("live calibration error", v.calibration_error) +
        `<span class="metric">predicted ${fmt(v.mean_probability * 100, 1)}% · observed ${fmt(v.observed_rate * 100, 1)}%</span>`;
  }
  const of = m.metrics.eval_roc_auc == null && m.metrics.eval_win_roc_auc != null ? " of P(won)" : "";
  return `<div class="model" data-task="${esc(m.name)}"><b>${esc(m.name)}</b> v${esc(m.version)}` +
    `${m.loaded ? "" : " (not loaded)"}<br>${show("AUC" + of, auc)}${show("calibration error", cal)}${show("Brier", brier)}<br>${live}</div>`;
}

async function loadAccuracy() {
  try {
    const models = served((await api("/v1/models")).models);
    if (!models.length) { setState("accuracy", "No model is trained yet: nothing to measure.", "note"); return; }
    const perfs = await Promise.all(models.map((m) => api(`/v1/models/${m.name}/performance`).catch(() => null)));
    const el = $("accuracy");
    el.className = "";
    el.innerHTML = models.map((m, i) => accuracyBlock(m, perfs[i])).join("<hr>") +
      "<p class='note'>AUC and calibration from the evaluation window at training; live figures from the outcomes reported since.</p>";
  } catch (e) { failed("accuracy", "Model accuracy", e); }
}

function wrapLabel(text, width, lines) {
  // `text` in at most `lines` lines of at most `width` characters, broken between words; what does not fit ends
  // in "…" (the full text is the label's tooltip, and the table below)
  const out = [];
  let line = "";
  for (const word of text.split(/\s+/)) {
    if (line && (line + " " + word).length > width) { out.push(line); line = word; } else line = line ? line + " " + word : word;
  }
  if (line) out.push(line);
  if (out.length <= lines) return out;
  const kept = out.slice(0, lines);
  kept[lines - 1] = kept[lines - 1].slice(0, width - 1).replace(/\s*$/, "") + "…";
  return kept;
}

function traitsChart(traits) {
  if (!traits.length) return "<p class='note'>No trait beats the base with confidence.</p>";
  // labels on the left, wrapped to the room kept for them (about 6 px a character at 11 px, wide ones included),
  // bars after it: a long trait never runs into its bar; the chart scales down in a narrow window
  const w = 760, left = 320, chars = 46, line = 13, pad = 6, max = Math.max(...traits.map((t) => t.heldout_high || t.lift)) * 1.05;
  const x = (v) => left + (w - left - 10) * v / max;
  const rows = traits.map((t) => wrapLabel(cap(t.label || t.trait), chars, 3));
  const heights = rows.map((r) => Math.max(26, r.length * line + pad + 2));
  const tops = heights.map((_, i) => heights.slice(0, i).reduce((a, h) => a + h, 0));
  const height = heights.reduce((a, h) => a + h, 0);
  let s = `<svg id="traits-svg" viewBox="0 0 ${w} ${height + 24}" width="${w}" height="${height + 24}" ` +
    `style="max-width:100%;height:auto" role="img" aria-label="trait lift">`;
  traits.forEach((t, i) => {
    const y = tops[i], mid = y + heights[i] / 2, lift = t.heldout_lift ?? t.lift, full = cap(t.label || t.trait);
    const first = mid - (rows[i].length - 1) * line / 2 + 4;
    s += `<text class="trait-label" x="0" y="${first}" font-size="11"><title>${esc(full)}</title>` +
      rows[i].map((l, k) => `<tspan x="0" y="${first + k * line}">${esc(l)}</tspan>`).join("") + "</text>";
    s += `<rect class="trait-bar" x="${left}" y="${mid - 8}" width="${x(lift) - left}" height="16" fill="#3b7dd8"><title>${esc(full)}: ${fmt(lift, 2)}x</title></rect>`;
    if (t.heldout_low != null) s += `<line x1="${x(t.heldout_low)}" x2="${x(t.heldout_high)}" y1="${mid}" y2="${mid}" stroke="#000"/>`;
  });
  s += `<line x1="${x(1)}" x2="${x(1)}" y1="0" y2="${height + 4}" stroke="#999" stroke-dasharray="3"/>`;
  s += `<text x="${x(1) + 3}" y="${height + 18}" font-size="10">1x = average customer</text></svg>`;
  return s;
}

async function loadTraits() {
  try {
    const t = await api("/v1/traits");
    const el = $("traits-chart");
    el.className = "";
    el.innerHTML = traitsChart(t.traits);
    $("traits").hidden = !t.traits.length;  // an empty table's header says nothing
    $("traits").querySelector("tbody").innerHTML = t.traits.map((r) =>
      `<tr><td title="${esc(r.trait)}">${esc(cap(r.label || r.trait))}</td><td class="num">${fmt(r.accounts)}</td><td class="num">${fmt(r.lift, 2)}x</td>` +
      `<td class="num">${r.heldout_lift == null ? "" : `${fmt(r.heldout_lift, 2)}x (${fmt(r.heldout_low, 2)}–${fmt(r.heldout_high, 2)})`}</td>` +
      `<td class="num">${fmt(r.stability * 100)}%</td></tr>`).join("");
  } catch (e) {
    $("traits").hidden = true;
    failed("traits-chart", "Traits", e);
  }
}

function connect() {
  localStorage.setItem("funnelcast-key", $("key").value);
  $("status").textContent = "";
  fresh = null;  // this connection's list says how fresh it is
  if (conn) settle(conn);  // the previous connection's waits end now
  conn = newConnection();
  banner();
  watchReadiness(conn);
  // no section waits for another: each draws when its own answer arrives
  return Promise.allSettled([loadWorklist(), loadForecast(), loadFunnel(), loadAccuracy(), loadTraits()]);
}

document.addEventListener("click", (e) => {
  const rep = e.target.closest && e.target.closest(".rep-link");
  if (rep) openRep(rep.dataset.rep);
});
$("key").value = localStorage.getItem("funnelcast-key") || "";
$("connect").addEventListener("click", connect);
$("drill-close").addEventListener("click", () => { $("drill").hidden = true; });
$("owner").addEventListener("change", loadWorklist);
$("download").addEventListener("click", () => downloadList().catch((e) => setState("worklist-state", "Download failed: " + e.message, "error")));
$("team").addEventListener("change", loadWorklist);
$("period").addEventListener("change", loadForecast);
setInterval(showFreshness, FRESHNESS_TICK_MS);
if ($("key").value) connect();
