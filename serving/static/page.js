"use strict";
const $ = (id) => document.getElementById(id);
const fmt = (x, d = 0) => Number(x).toLocaleString("en-US", {maximumFractionDigits: d, minimumFractionDigits: d});
const esc = (s) => String(s ?? "").replace(/[&<>"]/g, (c) => ({"&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;"}[c]));

async function api(path) {
  const r = await fetch(path, {headers: {"X-API-Key": $("key").value}});
  const body = await r.json().catch(() => ({}));
  if (!r.ok) throw new Error(body.detail || r.status);
  return body;
}

function fillSelect(sel, values) {
  if (sel.options.length > 1) return;
  for (const v of values) { const o = document.createElement("option"); o.value = v; o.textContent = v; sel.appendChild(o); }
}

async function loadWorklist() {
  const q = new URLSearchParams({limit: "50"});
  if ($("owner").value) q.set("owner", $("owner").value);
  if ($("team").value) q.set("team", $("team").value);
  const w = await api("/v1/worklist?" + q);
  fillSelect($("owner"), w.owners); fillSelect($("team"), w.teams);
  $("missing").textContent = w.missing.length ? "Not shown: " + w.missing.join("; ") : "";
  $("worklist").querySelector("tbody").innerHTML = w.items.map((it, i) =>
    `<tr data-owner="${esc(it.owner_id)}"><td>${i + 1}</td><td><span class="kind">${esc(it.kind)}</span></td><td>${esc(it.id)}</td>` +
    `<td>${esc(it.owner_id)}</td><td class="num">${fmt(it.score * 100)}</td><td class="num">${fmt(it.expected_value)}</td>` +
    `<td class="num">${fmt(it.value_per_effort)}</td><td>${esc(it.reasons[0] || "")}</td></tr>`).join("");
  $("status").textContent = `as of ${w.as_of}`;
}

function traitsChart(traits) {
  if (!traits.length) return "<p class='note'>No trait beats the base with confidence.</p>";
  const w = 520, row = 26, left = 260, max = Math.max(...traits.map((t) => t.heldout_high || t.lift)) * 1.05;
  const x = (v) => left + (w - left - 10) * v / max;
  let s = `<svg id="traits-svg" width="${w}" height="${row * traits.length + 24}" role="img" aria-label="trait lift">`;
  traits.forEach((t, i) => {
    const y = i * row + 4, lift = t.heldout_lift ?? t.lift;
    s += `<text x="0" y="${y + 15}" font-size="11">${esc(t.trait)}</text>`;
    s += `<rect x="${left}" y="${y + 3}" width="${x(lift) - left}" height="16" fill="#3b7dd8"><title>${fmt(lift, 2)}x</title></rect>`;
    if (t.heldout_low != null) s += `<line x1="${x(t.heldout_low)}" x2="${x(t.heldout_high)}" y1="${y + 11}" y2="${y + 11}" stroke="#000"/>`;
  });
  s += `<line x1="${x(1)}" x2="${x(1)}" y1="0" y2="${row * traits.length + 4}" stroke="#999" stroke-dasharray="3"/>`;
  s += `<text x="${x(1) + 3}" y="${row * traits.length + 18}" font-size="10">1x = average customer</text></svg>`;
  return s;
}

async function loadTraits() {
  try {
    const t = await api("/v1/traits");
    $("traits-chart").innerHTML = traitsChart(t.traits);
    $("traits").querySelector("tbody").innerHTML = t.traits.map((r) =>
      `<tr><td>${esc(r.trait)}</td><td class="num">${fmt(r.accounts)}</td><td class="num">${fmt(r.lift, 2)}x</td>` +
      `<td class="num">${r.heldout_lift == null ? "" : `${fmt(r.heldout_lift, 2)}x (${fmt(r.heldout_low, 2)}–${fmt(r.heldout_high, 2)})`}</td>` +
      `<td class="num">${fmt(r.stability * 100)}%</td></tr>`).join("");
  } catch (e) { $("traits-chart").innerHTML = `<p class="note">Traits not available: ${esc(e.message)}</p>`; }
}

function funnelChart(stages, bottleneck) {
  const w = 560, row = 30, left = 120, max = Math.max(1, ...stages.map((s) => s.entered));
  let s = `<svg id="funnel-svg" width="${w}" height="${row * stages.length + 8}" role="img" aria-label="funnel">`;
  stages.forEach((st, i) => {
    const y = i * row + 4, bw = (w - left - 150) * st.entered / max, hot = st.stage === bottleneck;
    s += `<text x="0" y="${y + 16}" font-size="12"${hot ? ' font-weight="bold"' : ""}>${esc(st.stage)}</text>`;
    s += `<rect class="stage-bar" data-stage="${esc(st.stage)}" x="${left}" y="${y + 3}" width="${bw}" height="20" fill="${hot ? "#d9534f" : "#3b7dd8"}">` +
      `<title>${esc(st.stage)}: ${fmt(st.entered)} entered</title></rect>`;
    const conv = st.conversion == null ? "" : ` · ${fmt(st.conversion * 100)}% on`;
    s += `<text x="${left + bw + 6}" y="${y + 16}" font-size="11">${fmt(st.entered)}${conv}${hot ? " · bottleneck" : ""}</text>`;
  });
  return s + "</svg>";
}

async function loadFunnel() {
  try {
    const f = await api("/v1/funnel");
    $("bottleneck").textContent = `Bottleneck: ${f.bottleneck}.`;
    $("funnel-summary").textContent = f.summary;
    $("funnel-chart").innerHTML = funnelChart(f.overall, f.bottleneck);
    $("funnel").querySelector("tbody").innerHTML = f.overall.map((r) =>
      `<tr${r.stage === f.bottleneck ? ' class="bottleneck"' : ""}><td>${esc(r.stage)}</td><td class="num">${fmt(r.entered)}</td>` +
      `<td class="num">${fmt(r.moved_on)}</td><td class="num">${fmt(r.lost)}</td>` +
      `<td class="num">${r.conversion == null ? "" : fmt(r.conversion * 100) + "%"}</td>` +
      `<td class="num">${r.median_days == null ? "" : fmt(r.median_days)}</td><td class="num">${fmt(r.value_lost)}</td></tr>`).join("");
  } catch (e) { $("bottleneck").textContent = "Funnel not available: " + e.message; }
}

function forecastChart(groups) {
  const w = 620, row = 24, left = 110, top = 22;
  const max = Math.max(1, ...groups.map((g) => Math.max(g.p90, g.weighted_pipeline))) * 1.05;
  const x = (v) => left + (w - left - 20) * v / max;
  const h = top + row * groups.length + 30;
  let s = `<svg id="forecast-svg" width="${w}" height="${h}" role="img" aria-label="forecast by rep">`;
  s += `<text x="${left}" y="12" font-size="10">bar: P10–P90 · tick: P50 · dot: expected · ◇: CRM weighted pipeline</text>`;
  groups.forEach((g, i) => {
    const y = top + i * row;
    s += `<g class="rep" data-rep="${esc(g.group)}"><text x="0" y="${y + 14}" font-size="12">${esc(g.group)}</text>`;
    s += `<rect class="interval" x="${x(g.p10)}" y="${y + 4}" width="${Math.max(1, x(g.p90) - x(g.p10))}" height="14" fill="#9cc0ef">` +
      `<title>${esc(g.group)}: P10 ${fmt(g.p10)} · P50 ${fmt(g.p50)} · P90 ${fmt(g.p90)} · expected ${fmt(g.expected_bookings)}</title></rect>`;
    s += `<line class="p50" x1="${x(g.p50)}" x2="${x(g.p50)}" y1="${y + 2}" y2="${y + 20}" stroke="#123" stroke-width="2"/>`;
    s += `<circle cx="${x(g.expected_bookings)}" cy="${y + 11}" r="3" fill="#d9534f"/>`;
    s += `<text x="${x(g.weighted_pipeline) - 4}" y="${y + 15}" font-size="11" fill="#555">◇</text></g>`;
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

async function loadForecast() {
  try {
    const f = await api("/v1/forecast?by=owner_id&sims=2000");
    const total = f.groups.reduce((a, g) => a + g.expected_bookings, 0);
    $("forecast-note").textContent = `Bookings expected in the next ${f.horizon_days} days: ${fmt(total)} ` +
      `(${f.groups.length} reps, model ${f.model.name} v${f.model.version}).`;
    $("forecast-chart").innerHTML = forecastChart(f.groups);
  } catch (e) { $("forecast-note").textContent = "Forecast not available: " + e.message; }
}

async function connect() {
  localStorage.setItem("funnelcast-key", $("key").value);
  try { await loadWorklist(); await loadTraits(); await loadFunnel(); await loadForecast(); }
  catch (e) { $("status").textContent = "error: " + e.message; }
}

$("key").value = localStorage.getItem("funnelcast-key") || "";
$("connect").addEventListener("click", connect);
$("owner").addEventListener("change", () => loadWorklist().catch((e) => { $("status").textContent = "error: " + e.message; }));
$("team").addEventListener("change", () => loadWorklist().catch((e) => { $("status").textContent = "error: " + e.message; }));
if ($("key").value) connect();
