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

async function loadFunnel() {
  const spec = await fetch("/openapi.json").then((r) => r.json());
  const paths = Object.keys(spec.paths || {});
  const funnel = paths.find((p) => p.includes("funnel")), forecast = paths.find((p) => p.includes("forecast"));
  if (!funnel && !forecast) {
    $("funnel").textContent = "The funnel and the forecast are not served by this API yet (no funnel or forecast route).";
    return;
  }
  $("funnel").textContent = `Served at ${[funnel, forecast].filter(Boolean).join(" and ")}; not drawn on this page yet.`;
}

async function connect() {
  localStorage.setItem("funnelcast-key", $("key").value);
  try { await loadWorklist(); await loadTraits(); await loadFunnel(); }
  catch (e) { $("status").textContent = "error: " + e.message; }
}

$("key").value = localStorage.getItem("funnelcast-key") || "";
$("connect").addEventListener("click", connect);
$("owner").addEventListener("change", () => loadWorklist().catch((e) => { $("status").textContent = "error: " + e.message; }));
$("team").addEventListener("change", () => loadWorklist().catch((e) => { $("status").textContent = "error: " + e.message; }));
if ($("key").value) connect();
