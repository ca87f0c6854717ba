// canarygate dashboard: overview, stage and rollout pages, polled every 2 s from the admin API.
// Charts are uPlot. Actions are shown only to an admin token (or any token where none is configured);
// where reads need a token, the page asks for one first.
"use strict";

const POLL_MS = 2000;
const WINDOW_S = 300;
const PERIOD_S = 2;
const $ = (sel) => document.querySelector(sel);
const esc = (s) => String(s ?? "").replace(/[&<>"']/g, (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" }[c]));
const token = () => sessionStorage.getItem("canarygate-token") || "";

async function api(method, path, body) {
  const headers = { "content-type": "application/json" };
  if (token()) headers.authorization = "Bearer " + token();
  const r = await fetch(path, { method, headers, body: body === undefined ? undefined : JSON.stringify(body) });
  const text = await r.text();
  const v = text ? JSON.parse(text) : null;
  if (!r.ok) {
    const e = new Error((v && v.error && v.error.message) || r.status + " " + r.statusText);
    e.status = r.status;
    throw e;
  }
  return v;
}

// What the entered token may do: {role, tokensConfigured, readRequiresToken}, or "locked" when reads
// need a token this page does not have.
let who = { role: "anonymous", tokensConfigured: false };
async function whoami() {
  try {
    who = await api("GET", "/v1/auth");
  } catch (e) {
    who = e.status === 401 ? { role: "locked", tokensConfigured: true } : { role: "anonymous", tokensConfigured: false };
  }
  renderAuth();
}
const canAct = () => who.role === "admin" || (!who.tokensConfigured && !!token());

function toast(msg) {
  const t = $("#toast");
  t.textContent = msg;
  t.hidden = false;
  clearTimeout(toast.timer);
  toast.timer = setTimeout(() => (t.hidden = true), 4000);
}

function renderAuth() {
  const has = !!token();
  $("#auth-state").textContent = {
    admin: "admin token", readOnly: "read-only token", locked: has ? "token not accepted" : "token needed",
  }[who.role] || (has && who.tokensConfigured ? "token not accepted" : has ? "token set" : "read-only");
  $("#token").hidden = has;
  $("#token-set").hidden = has;
  $("#token-clear").hidden = !has;
  document.body.classList.toggle("can-act", canAct());
}
$("#token-set").onclick = () => { sessionStorage.setItem("canarygate-token", $("#token").value.trim()); $("#token").value = ""; renderAuth(); refresh(true); };
$("#token-clear").onclick = () => { sessionStorage.removeItem("canarygate-token"); renderAuth(); refresh(true); };

// === routing ===
let route = null;
let timer = null;
let charts = {};
let weightSamples = {}; // stage key -> [[unix seconds, weight]]

function parseRoute() {
  const parts = location.hash.replace(/^#\/?/, "").split("/").filter(Boolean).map(decodeURIComponent);
  if (parts[0] === "stage" && parts.length === 3) return { page: "stage", api: parts[1], stage: parts[2] };
  if (parts[0] === "rollout" && parts.length === 2) return { page: "rollout", id: parts[1] };
  return { page: "overview" };
}

window.addEventListener("hashchange", () => refresh(true));

async function refresh(fresh) {
  clearTimeout(timer);
  const next = parseRoute();
  if (fresh || !route || JSON.stringify(next) !== JSON.stringify(route)) {
    route = next;
    for (const c of Object.values(charts)) c.destroy();
    charts = {};
    $("#view").innerHTML = "<p class='muted'>Loading…</p>";
  }
  try {
    if (fresh || who.role === "locked") await whoami();
    if (who.role === "locked") {
      crumbs("");
      $("#view").innerHTML = `<p class="pill ALARM" id="need-token">This server needs a token to read: enter a read-only or admin token above.</p>`;
    } else if (route.page === "stage") await stagePage(route.api, route.stage);
    else if (route.page === "rollout") await rolloutPage(route.id);
    else await overview();
  } catch (e) {
    $("#view").innerHTML = `<p class="pill ALARM">${esc(e.message)}</p>`;
  }
  timer = setTimeout(() => refresh(false), POLL_MS);
}

function crumbs(html) { $("#crumbs").innerHTML = html; }
const fmtPct = (v) => (v == null ? "–" : (Math.round(v * 10) / 10) + "%");
const time = (iso) => new Date(iso).toLocaleTimeString();
// Numbers as the evidence line prints them (the analysis's own text): 6.6e-5, 1.2e4, 42, 0.153.
const num = (x) => (x == null ? "–" : x >= 1e4 || (x > 0 && x < 1e-3) ? x.toExponential(1).replace("e+", "e") : x >= 10 ? x.toFixed(0) : x.toFixed(3));
const fixed = (x, digits) => (x == null ? "-" : x.toFixed(digits));
const fmtSeconds = (s) => (s == null ? "–" : s >= 3600 ? `${Math.floor(s / 3600)} h ${Math.floor((s % 3600) / 60)} min` : s >= 60 ? `${Math.floor(s / 60)} min ${s % 60} s` : `${s} s`);
// A target deployment and its stage variable overrides, as a name and key = value lines.
function target(deploymentId, overrides) {
  const o = Object.entries(overrides || {});
  return `<span class="dep">${esc(deploymentId)}</span>` + (o.length
    ? `<dl class="overrides">${o.map(([k, v]) => `<dt>${esc(k)}</dt><dd>${esc(v)}</dd>`).join("")}</dl>`
    : ` <span class="muted">no overrides</span>`);
}
// Where a rollout is: "step 2 of 4 (30%)", or its phase.
function stepText(r) {
  if (r.currentStep != null) return `step ${r.currentStep + 1} of ${r.steps.length} (${r.steps[r.currentStep].weight}%)`;
  return r.status === "InProgress" ? "before traffic" : r.status === "Created" ? "waiting to start" : "–";
}
// The analysis in one cell: each judgement's e-value against its rejection bar.
function evidenceText(ev) {
  if (!ev) return "no analysis";
  const parts = [];
  if (ev.errorRate) parts.push(`errors e ${num(ev.errorRate.eValue)} / ${num(1 / ev.errorRate.alpha)}${ev.errorRate.rejected ? " rejected" : ""}`);
  if (ev.latency) parts.push(`latency e ${num(ev.latency.eValue)} / ${num(1 / ev.latency.alpha)}${ev.latency.rejected ? " rejected" : ""}`);
  return parts.join(", ") || "no judgements";
}

// === overview ===
async function overview() {
  crumbs("overview");
  const [apis, recent] = await Promise.all([api("GET", "/v1/apis"), api("GET", "/v1/rollouts?limit=20")]);
  const rows = [];
  for (const a of apis.items) {
    const stages = (await api("GET", `/v1/apis/${encodeURIComponent(a.name)}/stages`)).items;
    for (const s of stages) {
      const c = s.canarySettings;
      rows.push(`<tr>
        <td><a href="#/stage/${encodeURIComponent(a.name)}/${encodeURIComponent(s.name)}">${esc(a.name)} / ${esc(s.name)}</a></td>
        <td>${esc(s.deploymentId)}</td>
        <td data-weight="${esc(a.name)}/${esc(s.name)}">${c ? fmtPct(c.percentTraffic) : "no canary"}</td>
        <td>${c ? target(c.deploymentId, c.stageVariableOverrides) : ""}</td>
        <td>${s.activeRollout ? `<a href="#/rollout/${encodeURIComponent(s.activeRollout)}">${esc(s.activeRollout)}</a>` : "–"}</td>
      </tr>`);
    }
  }
  const active = recent.items.filter((r) => r.status === "InProgress" || r.status === "Created");
  const activeRows = active.map((r) => `<tr data-rollout="${esc(r.id)}">
      <td><a href="#/rollout/${encodeURIComponent(r.id)}">${esc(r.id)}</a> <span class="pill ${esc(r.status)}">${esc(r.status)}</span></td>
      <td><a href="#/stage/${encodeURIComponent(r.api)}/${encodeURIComponent(r.stage)}">${esc(r.api)} / ${esc(r.stage)}</a></td>
      <td class="step">${esc(stepText(r))}</td>
      <td class="weight">${fmtPct(r.weight)}</td>
      <td>${r.timeLeftSeconds == null ? (r.waitingFor ? esc(r.waitingFor) : "–") : fmtSeconds(r.timeLeftSeconds)}</td>
      <td class="evidence">${esc(evidenceText(r.evidence))}</td></tr>`);
  const events = recent.items
    .flatMap((r) => r.events.map((e, i) => ({ ...e, rollout: r, i })))
    .sort((p, q) => Date.parse(q.time) - Date.parse(p.time) || (p.rollout === q.rollout ? q.i - p.i : 0))
    .slice(0, 12);
  $("#view").innerHTML = `<h1>Active rollouts</h1>
    <table id="active-rollouts"><thead><tr><th>ROLLOUT</th><th>STAGE</th><th>STEP</th><th>WEIGHT</th><th>TIME LEFT</th><th>EVIDENCE</th></tr></thead>
    <tbody>${activeRows.join("") || "<tr><td colspan=6 class=muted>No rollout is running.</td></tr>"}</tbody></table>
    <h1>APIs and stages</h1>
    <table><thead><tr><th>STAGE</th><th>DEPLOYMENT</th><th>CANARY WEIGHT</th><th>CANARY</th><th>ACTIVE ROLLOUT</th></tr></thead>
    <tbody>${rows.join("") || "<tr><td colspan=5 class=muted>No stages yet.</td></tr>"}</tbody></table>
    <h2>Last events</h2>
    <ul class="timeline" id="last-events">${events.map((e) => `<li><span class="t">${time(e.time)}</span><span class="pill ${esc(e.status)}">${esc(e.status)}</span>
      <a href="#/rollout/${encodeURIComponent(e.rollout.id)}">${esc(e.rollout.id)}</a> ${esc(e.rollout.api)}/${esc(e.rollout.stage)} · ${fmtPct(e.weight)} · ${esc(e.reason)}</li>`).join("")
      || "<li class=muted>No events yet.</li>"}</ul>`;
}

// === stage ===
async function metric(a, s, variant, m, stat, start, end) {
  const q = new URLSearchParams({ api: a, stage: s, variant, metric: m, statistic: stat, periodSeconds: PERIOD_S, start: start.toISOString(), end: end.toISOString() });
  const v = await api("GET", "/v1/metrics?" + q);
  const out = new Map();
  for (const p of v.datapoints) out.set(Date.parse(p.timestamp) / 1000, p.value);
  return out;
}

// Points with no neighbour (a value between two gaps) draw no line: draw them as dots.
function isolated(u, si, show) {
  if (show) return null;
  const ys = u.data[si];
  const idx = [];
  for (let i = 0; i < ys.length; i++) {
    if (ys[i] != null && (i === 0 || ys[i - 1] == null) && (i === ys.length - 1 || ys[i + 1] == null)) idx.push(i);
  }
  return idx.length ? idx : null;
}

// A chart over xs (unix seconds); `range` fixes the time axis ([from, to]) instead of the data's extent.
function chart(id, title, series, xs, ys, range) {
  const el = document.getElementById(id);
  const points = ys.map((y) => y.filter((v) => v != null).length);
  el.dataset.points = series.map((s, i) => `${s.key}:${points[i]}`).join(",");
  const data = [xs, ...ys];
  const x = range ? { time: true, range: () => range } : { time: true };
  if (charts[id]) {
    if (range) charts[id].scales.x.range = () => range;
    charts[id].setData(data);
    return;
  }
  const width = Math.max(300, el.clientWidth - 10);
  charts[id] = new uPlot({
    title, width, height: 200, scales: { x },
    series: [{}, ...series.map((s) => ({
      label: s.label, stroke: s.color, width: 2, spanGaps: false,
      points: { show: s.points || false, size: 7, fill: s.color, filter: s.points ? null : isolated },
      paths: s.points ? () => null : undefined,
    }))],
    axes: [{}, { size: 60 }],
  }, data, el);
}

async function stagePage(a, s) {
  crumbs(`<a href="#/">overview</a> / stage ${esc(a)}/${esc(s)}`);
  const stage = await api("GET", `/v1/apis/${encodeURIComponent(a)}/stages/${encodeURIComponent(s)}`);
  const rollouts = (await api("GET", `/v1/rollouts?api=${encodeURIComponent(a)}&stage=${encodeURIComponent(s)}`)).items;
  const alarms = (await api("GET", "/v1/alarms")).items.filter((x) => x.api === a && x.stage === s);
  const end = new Date();
  const start = new Date(end.getTime() - WINDOW_S * 1000);
  const t0 = Math.floor(start.getTime() / 1000 / PERIOD_S) * PERIOD_S;
  const xs = [];
  for (let t = t0; t <= end.getTime() / 1000; t += PERIOD_S) xs.push(t);
  const m = {};
  await Promise.all(["production", "canary"].flatMap((v) => [
    ["Count", "Sum"], ["5XXError", "Average"], ["Latency", "p50"], ["Latency", "p99"],
  ].map(async ([name, stat]) => { m[`${v}.${name}.${stat}`] = await metric(a, s, v, name, stat, start, end); })));
  const col = (k, f = (x) => x) => xs.map((x) => (m[k].has(x) ? f(m[k].get(x)) : null));

  // The canary weight over time: rollout events (history) and this page's own samples.
  const key = `${a}/${s}`;
  const current = stage.canarySettings ? stage.canarySettings.percentTraffic : 0;
  const samples = (weightSamples[key] = (weightSamples[key] || []).concat([[end.getTime() / 1000, current]]).slice(-400));
  const marks = [];
  for (const r of rollouts) for (const e of r.events) marks.push([Date.parse(e.time) / 1000, e.weight, r.id, e.reason, e.status]);
  const all = marks.map(([t, w]) => [t, w]).concat(samples).sort((p, q) => p[0] - q[0]);
  const weightAt = (x) => { let w = null; for (const [t, v] of all) { if (t <= x + PERIOD_S) w = v; else break; } return w; };
  const eventAt = (x) => { const e = marks.filter(([t]) => t >= x && t < x + PERIOD_S); return e.length ? e[e.length - 1][1] : null; };

  const active = rollouts.find((r) => r.status === "InProgress" || r.status === "Created");
  if (!$("#stage-head")) {
    $("#view").innerHTML = `
      <div id="stage-head"></div>
      <div class="actions can-act-only" id="actions">
        <label>canary weight <input id="act-weight" type="number" min="0" max="100" step="0.1"></label>
        <button id="act-set">Set weight</button>
        <button id="act-promote">Promote canary</button>
        <button id="act-remove" class="danger">Remove canary</button>
        <button id="act-rollout-promote">Promote rollout to 100%</button>
        <button id="act-stop" class="danger">Stop rollout</button>
      </div>
      <div class="grid">
        <div class="card"><div id="c-rps"></div></div>
        <div class="card"><div id="c-5xx"></div></div>
        <div class="card"><div id="c-lat"></div></div>
        <div class="card"><div id="c-weight"></div></div>
      </div>
      <h2>Alarms</h2><div id="alarms"></div>
      <h2>Rollouts</h2><div id="rollouts"></div>`;
    const path = `/v1/apis/${encodeURIComponent(a)}/stages/${encodeURIComponent(s)}`;
    const act = (f, what) => async () => { try { await f(); toast(what); refresh(false); } catch (e) { toast("Refused: " + e.message); } };
    $("#act-set").onclick = act(() => api("PATCH", path, { patchOperations: [{ op: "replace", path: "/canarySettings/percentTraffic", value: String($("#act-weight").value) }] }), "Weight set");
    $("#act-promote").onclick = act(() => api("POST", path + "/canary/promote"), "Canary promoted");
    $("#act-remove").onclick = act(() => api("DELETE", path + "/canary"), "Canary removed");
    $("#act-rollout-promote").onclick = act(() => api("POST", `/v1/rollouts/${encodeURIComponent($("#act-stop").dataset.rollout)}/promote`), "Rollout promotion requested");
    $("#act-stop").onclick = act(() => api("POST", `/v1/rollouts/${encodeURIComponent($("#act-stop").dataset.rollout)}/stop`, { rollback: true }), "Rollout stopped");
  }
  const c = stage.canarySettings;
  $("#stage-head").innerHTML = `<h1>${esc(a)} / ${esc(s)}</h1><div class="facts">
    <div class="fact"><div class="k">deployment</div><div class="v">${esc(stage.deploymentId)}</div></div>
    <div class="fact"><div class="k">canary weight</div><div class="v" id="weight">${c ? fmtPct(c.percentTraffic) : "no canary"}</div></div>
    <div class="fact"><div class="k">canary</div><div class="v">${c ? target(c.deploymentId, c.stageVariableOverrides) : "–"}</div></div>
    <div class="fact"><div class="k">active rollout</div><div class="v">${active ? `<a href="#/rollout/${encodeURIComponent(active.id)}">${esc(active.id)}</a> <span class="pill ${active.status}">${active.status}</span>` : "–"}</div></div>
  </div>`;
  $("#actions").hidden = !canAct();
  $("#act-promote").hidden = !c || !!active;
  $("#act-remove").hidden = !c || !!active;
  $("#act-set").hidden = !!active;
  $("#act-weight").parentElement.hidden = !!active;
  $("#act-stop").hidden = !active;
  $("#act-rollout-promote").hidden = !active;
  if (active) $("#act-stop").dataset.rollout = active.id;

  const P = { key: "production", label: "production", color: "#2563eb" };
  const C = { key: "canary", label: "canary", color: "#f59e0b" };
  chart("c-rps", "requests/s", [P, C], xs, [col("production.Count.Sum", (v) => v / PERIOD_S), col("canary.Count.Sum", (v) => v / PERIOD_S)]);
  chart("c-5xx", "5xx rate (%)", [P, C], xs, [col("production.5XXError.Average", (v) => v * 100), col("canary.5XXError.Average", (v) => v * 100)]);
  chart("c-lat", "latency p50 / p99 (ms)", [
    { ...P, key: "production-p50", label: "production p50" }, { key: "production-p99", label: "production p99", color: "#93c5fd" },
    { ...C, key: "canary-p50", label: "canary p50" }, { key: "canary-p99", label: "canary p99", color: "#fcd34d" },
  ], xs, [col("production.Latency.p50"), col("production.Latency.p99"), col("canary.Latency.p50"), col("canary.Latency.p99")]);
  chart("c-weight", "canary weight (%) and rollout events", [
    { key: "weight", label: "canary weight", color: "#f59e0b" }, { key: "events", label: "rollout events", color: "#dc2626", points: true },
  ], xs, [xs.map(weightAt), xs.map(eventAt)]);

  $("#alarms").innerHTML = alarms.length ? `<table><thead><tr><th>ALARM</th><th>RULE</th><th>STATE</th><th>OBSERVED</th><th>THRESHOLD</th><th>REASON</th></tr></thead><tbody>${alarms.map((x) => {
    const last = (x.datapoints || []).filter((p) => p.value != null).slice(-1)[0];
    return `<tr><td>${esc(x.name)}${x.dryRun ? ` <span class="muted">(dry run)</span>` : ""}</td><td>${esc(x.variant)} ${esc(x.statistic)} ${esc(x.metric)} ${esc(x.comparison)}</td>
      <td><span class="pill ${esc(x.state)}" data-alarm="${esc(x.name)}">${esc(x.state)}</span></td>
      <td>${last ? esc(Math.round(last.value * 1000) / 1000) : "–"}</td><td>${esc(x.threshold)}</td><td class="muted">${esc(x.stateReason)}</td></tr>`;
  }).join("")}</tbody></table>` : "<p class='muted'>No alarms on this stage.</p>";
  $("#rollouts").innerHTML = rollouts.length ? `<table><thead><tr><th>ROLLOUT</th><th>STATUS</th><th>WEIGHT</th><th>CONFIG</th><th>CREATED</th></tr></thead><tbody>${rollouts.slice(0, 20).map((r) =>
    `<tr><td><a href="#/rollout/${encodeURIComponent(r.id)}">${esc(r.id)}</a></td><td><span class="pill ${esc(r.status)}">${esc(r.status)}</span></td>
     <td>${fmtPct(r.weight)}</td><td>${esc(r.deploymentConfig.name)}</td><td>${time(r.createdAt)}</td></tr>`).join("")}</tbody></table>` : "<p class='muted'>No rollouts yet.</p>";
}

// === rollout ===

async function rolloutPage(id) {
  const r = await api("GET", `/v1/rollouts/${encodeURIComponent(id)}`);
  crumbs(`<a href="#/">overview</a> / <a href="#/stage/${encodeURIComponent(r.api)}/${encodeURIComponent(r.stage)}">stage ${esc(r.api)}/${esc(r.stage)}</a> / rollout ${esc(id)}`);
  if (!$("#rollout-head")) {
    $("#view").innerHTML = `<div id="rollout-head"></div>
      <div class="actions can-act-only" id="rollout-actions" hidden><button id="act-approve">Approve this step</button>
        <button id="act-pause">Pause</button><button id="act-resume">Resume</button><button id="act-continue">End this step now</button></div>
      <div id="analysis" hidden><h2>Canary analysis</h2><p id="evidence-line" class="muted"></p>
        <div id="evidence-table"></div><div class="card"><div id="c-evidence"></div></div></div>
      <h2>Steps</h2><div class="steps" id="steps"></div>
      <h2>Events</h2><ul class="timeline" id="events"></ul>`;
  }
  $("#rollout-head").innerHTML = `<h1>Rollout ${esc(id)} <span class="pill ${esc(r.status)}" id="rollout-status">${esc(r.status)}</span></h1>
    <div class="facts">
      <div class="fact"><div class="k">weight</div><div class="v">${fmtPct(r.weight)}</div></div>
      <div class="fact"><div class="k">config</div><div class="v">${esc(r.deploymentConfig.name)}</div></div>
      <div class="fact"><div class="k">step</div><div class="v" id="rollout-step">${esc(stepText(r))}</div></div>
      <div class="fact"><div class="k">target</div><div class="v" id="rollout-target">${target(r.deploymentId, r.stageVariableOverrides)}</div></div>
      <div class="fact"><div class="k">time left</div><div class="v">${fmtSeconds(r.timeLeftSeconds)}</div></div>
      <div class="fact"><div class="k">alarms</div><div class="v">${esc(r.alarms.join(", ") || "none")}</div></div>
    </div>${r.paused ? `<p class="pill Stopped" id="paused">paused by ${esc(r.paused.by)} since ${time(r.paused.at)}</p>` : ""}${r.waitingFor ? `<p class="pill Created" id="waiting-for">${esc(r.waitingFor)}</p>` : ""}${(r.wouldHaveRolledBack || []).length ? `<div id="dry-run"><h2>Dry run</h2><ul class="timeline">${r.wouldHaveRolledBack.map((w) =>
      `<li><span class="t">${time(w.at)}</span><span class="pill RolledBack">would have rolled back</span> ${esc(w.by)} at step ${w.step ?? "–"} · ${fmtPct(w.weight)} · <span class="muted">${esc(w.reason)}</span></li>`).join("")}</ul></div>` : ""}`;
  const awaiting = r.status === "InProgress" && (r.waitingFor || "").startsWith("waiting for an approval");
  const step = r.currentStep != null ? r.steps[r.currentStep] : null;
  const atStep = r.status === "InProgress" && ((r.phase && r.phase.phase) === "mirroring" || ((r.phase && r.phase.phase) === "shifting" && step && step.weight < 100));
  $("#act-approve").hidden = !awaiting || !!r.paused;
  $("#act-pause").hidden = !atStep || !!r.paused;
  $("#act-resume").hidden = !r.paused;
  $("#act-continue").hidden = !atStep || !!r.paused || (step && step.approval);
  $("#rollout-actions").hidden = !(canAct() && (awaiting || atStep || r.paused));
  const control = (action, done) => async () => {
    try { await api("POST", `/v1/rollouts/${encodeURIComponent(id)}/${action}`); toast(done); refresh(false); } catch (e) { toast("Refused: " + e.message); }
  };
  $("#act-approve").onclick = control("approve", "Step approved");
  $("#act-pause").onclick = control("pause", "Rollout paused");
  $("#act-resume").onclick = control("resume", "Rollout resumed");
  $("#act-continue").onclick = control("continue", "The step's wait ends now");
  $("#steps").innerHTML = r.steps.map((s, i) => {
    const cls = r.currentStep === i ? "current" : (r.currentStep != null && i < r.currentStep) || r.status === "Succeeded" ? "done" : "";
    return `<span class="step ${cls}">${s.weight}%${s.approval ? " · approval" : s.waitSeconds ? " · " + s.waitSeconds + " s" : ""}</span>`;
  }).join("");
  $("#events").innerHTML = r.events.map((e) => `<li><span class="t">${time(e.time)}</span><span class="pill ${esc(e.status)}">${esc(e.status)}</span>
      step ${e.step ?? "–"} · ${fmtPct(e.weight)} · ${esc(e.reason)}</li>`).join("");
  // The rollout's own time: from its creation to its last event once it has ended, else to now.
  const from = Date.parse(r.createdAt) / 1000;
  const ended = !(r.status === "InProgress" || r.status === "Created");
  const last = r.events.length ? Date.parse(r.events[r.events.length - 1].time) / 1000 : from;
  const to = Math.max(from + 1, ended ? Math.max(last, Date.parse(r.updatedAt) / 1000) : Date.now() / 1000);
  evidence(r.evidence, [from, to]);
}

// The analysis's evidence: e-values against their rejection line (log10), and the numbers behind them.
function evidence(ev, range) {
  $("#analysis").hidden = !ev;
  if (!ev) return;
  $("#evidence-line").textContent = ev.line || "no batches judged yet";
  const rows = [];
  const e = ev.errorRate, l = ev.latency;
  if (e) rows.push(`<tr><td>error rate</td><td>${num(e.eValue)}</td><td>${num(1 / e.alpha)}</td><td>${num(e.pValue)}</td>
    <td>canary ${e.canaryErrors}/${e.canaryRequests}, production ${e.productionErrors}/${e.productionRequests}; ratio ${fixed(e.ratio, 2)} [${fixed(e.ratioLow, 2)}, ${fixed(e.ratioHigh, 2)}]</td>
    <td><span class="pill ${e.rejected ? "ALARM" : "OK"}">${e.rejected ? "rejected" : "no evidence against"}</span></td></tr>`);
  if (l) rows.push(`<tr><td>latency</td><td>${num(l.eValue)}</td><td>${num(1 / l.alpha)}</td><td>${num(l.pValue)}</td>
    <td>p50 ${fixed(l.canaryP50Ms, 1)} vs ${fixed(l.productionP50Ms, 1)} ms, p99 ${fixed(l.canaryP99Ms, 1)} vs ${fixed(l.productionP99Ms, 1)} ms</td>
    <td><span class="pill ${l.rejected ? "ALARM" : "OK"}">${l.rejected ? "rejected" : "no evidence against"}</span></td></tr>`);
  $("#evidence-table").innerHTML = `<table><thead><tr><th>JUDGEMENT</th><th>E-VALUE</th><th>REJECTS AT</th><th>ANYTIME P</th><th>OBSERVED</th><th></th></tr></thead>
    <tbody>${rows.join("")}</tbody></table>`;
  // Points outside the rollout's time (a clock step) are left out rather than stretching the axis.
  const h = (ev.history || []).filter((p) => p.second >= Math.floor(range[0]) && p.second <= range[1]);
  const xs = h.map((p) => p.second);
  const series = [], ys = [];
  if (e) { series.push({ key: "errors", label: "error rate log10 e", color: "#dc2626" }); ys.push(h.map((p) => p.errors ?? null)); }
  if (l) { series.push({ key: "latency", label: "latency log10 e", color: "#7c3aed" }); ys.push(h.map((p) => p.latency ?? null)); }
  const alpha = Math.min(e ? e.alpha : 1, l ? l.alpha : 1);
  series.push({ key: "reject", label: "rejection line log10(1/alpha)", color: "#6b7280" });
  ys.push(xs.map(() => Math.log10(1 / alpha)));
  chart("c-evidence", "evidence against the canary (log10 e-value)", series, xs, ys, range);
}

refresh(true);
