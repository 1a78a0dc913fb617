// Flotilla dashboard: one page, no dependencies. It reads a live stream of views
// (`/ui/stream`, server-sent events) from the master that served it; if that master goes away
// it carries on with the stream of another master it learned of from the last view.
"use strict";

const state = {
  view: null,          // the latest view
  base: "",            // "" = the origin that served the page, else "http://host:port"
  bases: [],           // every master's address from the last view
  live: false,
  // Per job: [time_ms, finished tasks] samples, for rates.
  samples: new Map(),
  job: null,           // the job page's data: {id, detail, results, at}
  jobFilter: { state: "", text: "" },
  kindFilter: "",
  streamCount: 0,      // how many streams this page opened (reconnects), shown for diagnosis
};

const $ = (sel) => document.querySelector(sel);
const esc = (v) => String(v ?? "").replace(/[&<>"']/g, (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" }[c]));
const fmtMs = (ms) => ms == null ? "–" : ms < 1000 ? `${ms} ms` : ms < 60000 ? `${(ms / 1000).toFixed(1)} s` : `${Math.round(ms / 60000)} min`;
const token = () => localStorage.getItem("flotilla-token") || "";

// Sizes arrive as data attributes and are set here: the page's Content-Security-Policy allows
// no inline style attributes.
function applySizes(root) {
  for (const el of root.querySelectorAll("[data-w]")) el.style.width = `${el.dataset.w}%`;
  for (const el of root.querySelectorAll("[data-left]")) el.style.left = `${el.dataset.left}%`;
}
new MutationObserver(() => applySizes(document)).observe(document.body, { childList: true, subtree: true });

function headers() {
  const t = token();
  return t ? { Authorization: `Bearer ${t}` } : {};
}

function askToken() {
  $("#token-box").hidden = false;
}

$("#token-save").addEventListener("click", () => {
  localStorage.setItem("flotilla-token", $("#token").value.trim());
  $("#token-box").hidden = true;
});

// ---- the stream ---------------------------------------------------------------------------

async function readStream(base) {
  const response = await fetch(`${base}/ui/stream`, { headers: headers(), cache: "no-store" });
  if (response.status === 401) {
    askToken();
    throw new Error("token needed");
  }
  if (!response.ok || !response.body) throw new Error(`HTTP ${response.status}`);
  state.streamCount += 1;
  const reader = response.body.getReader();
  const decoder = new TextDecoder();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) throw new Error("stream ended");
    buffer += decoder.decode(value, { stream: true });
    let cut;
    while ((cut = buffer.indexOf("\n\n")) >= 0) {
      const frame = buffer.slice(0, cut);
      buffer = buffer.slice(cut + 2);
      const data = frame.split("\n").filter((l) => l.startsWith("data:")).map((l) => l.slice(5).replace(/^ /, "")).join("\n");
      if (data) onView(JSON.parse(data), base);
    }
  }
}

async function streamForever() {
  let next = 0;
  for (;;) {
    try {
      await readStream(state.base);
    } catch (e) {
      state.live = false;
      renderConn(String(e.message || e));
    }
    // Try the other masters in turn (the one that served the page first).
    const candidates = [""].concat(state.bases.filter((b) => b !== location.origin));
    next = (next + 1) % candidates.length;
    state.base = candidates[next];
    await new Promise((r) => setTimeout(r, 400));
  }
}

function onView(view, base) {
  state.view = view;
  state.live = true;
  state.base = base;
  state.bases = view.masters.map((m) => `http://${m.address}`);
  const now = view.generated_at_ms;
  for (const j of view.jobs) {
    const done = j.tasks.succeeded + j.tasks.failed + j.tasks.cancelled;
    const s = state.samples.get(j.id) || [];
    s.push([now, done]);
    while (s.length > 2 && now - s[0][0] > 15000) s.shift();
    state.samples.set(j.id, s);
  }
  renderConn();
  render();
}

function renderConn(problem) {
  const el = $("#conn");
  const v = state.view;
  if (!state.live || !v) {
    el.className = "conn conn-stale";
    el.textContent = `reconnecting… ${problem ? "(" + problem + ")" : ""}`;
    return;
  }
  const n = v.node;
  const fresh = n.role === "leader"
    ? "leader: current"
    : `${n.role}: leader heard ${fmtMs(v.leader_silent_ms)} ago, ${lagOf(n.id)} entries behind`;
  // A follower cut off from the leader still serves, but says its data may be old.
  el.className = n.role !== "leader" && v.leader_silent_ms > 2000 ? "conn conn-stale" : "conn conn-live";
  el.dataset.node = n.id;
  el.dataset.role = n.role;
  el.textContent = `live from master ${n.id} (${fresh})`;
}

function lagOf(id) {
  const m = state.view.masters.find((x) => x.id === id);
  return m && m.lag != null ? m.lag : "?";
}

// ---- pages --------------------------------------------------------------------------------

function route() {
  const h = location.hash.replace(/^#\/?/, "");
  const [page, arg] = h.split("/");
  return { page: page || "cluster", arg };
}

window.addEventListener("hashchange", () => {
  state.job = null;
  $("#page").dataset.key = "";
  render();
});

function render() {
  const { page, arg } = route();
  document.querySelectorAll("header nav a").forEach((a) => a.classList.toggle("active", a.dataset.page === page || (page === "job" && a.dataset.page === "jobs")));
  const v = state.view;
  if (!v) return;
  const main = $("#page");
  // Pages with inputs are redrawn only when their data changed (a redraw loses focus and
  // closes what the user opened).
  let key = null;
  if (page === "job") key = `job/${arg}`;
  if (page === "timeline") key = `timeline/${v.events.length ? v.events[v.events.length - 1].seq : 0}/${state.kindFilter}`;
  if (key !== null && key === main.dataset.key) {
    if (page === "job") loadJob(Number(arg));
    return;
  }
  main.dataset.key = key ?? "";
  main.dataset.page = page;
  if (page === "jobs") main.innerHTML = jobsPage(v);
  else if (page === "job") { main.innerHTML = jobPage(Number(arg)); loadJob(Number(arg)); }
  else if (page === "timeline") main.innerHTML = timelinePage(v);
  else if (page === "graph") main.innerHTML = graphPage(v);
  else main.innerHTML = clusterPage(v);
  bindFilters();
}

function badge(text) {
  return `<span class="badge ${esc(text)}">${esc(text)}</span>`;
}

function clusterPage(v) {
  const leader = v.masters.find((m) => m.role === "leader");
  const up = v.workers.filter((w) => w.state !== "lost");
  const cpus = up.reduce((a, w) => [a[0] + w.cpus_busy, a[1] + w.cpus_total, a[2] + w.cpus_queued], [0, 0, 0]);
  const counts = v.job_counts;
  const tiles = [
    ["leader", leader ? `master ${leader.id}` : "none"],
    ["term", v.node.term],
    ["workers up", v.workers.filter((w) => w.state !== "lost").length],
    ["cpus busy", `${cpus[0]} / ${cpus[1]}`],
    ["cpus queued", cpus[2]],
    ["jobs running", (counts.running || 0) + (counts.waiting || 0)],
    ["jobs done", (counts.succeeded || 0) + (counts.failed || 0) + (counts.cancelled || 0)],
  ].map(([k, val]) => `<div class="tile"><span class="muted">${esc(k)}</span><b id="tile-${k.replace(/ /g, "-")}">${esc(val)}</b></div>`).join("");
  const masters = v.masters.map((m) => `
    <tr class="master ${m.reachable ? "" : "unreachable"}" data-id="${m.id}" data-role="${esc(m.role)}" data-reachable="${m.reachable}">
      <td>${m.id}${m.id === v.node.id ? ' <span class="muted">(this page)</span>' : ""}</td><td>${esc(m.address)}</td><td>${badge(m.role)}</td>
      <td>${m.term ?? "–"}</td><td>${m.last_applied ?? "–"}</td><td>${m.lag ?? "–"}</td>
      <td>${m.rtt_ms == null ? "–" : `${Math.round(m.rtt_ms)} ms`}</td></tr>`).join("");
  const warnings = (v.warnings || []).map((w) => w.kind === "slow_peer"
    ? `<p class="warning" data-kind="slow_peer">Round trip from master ${w.from} to master ${w.to} is ${Math.round(w.rtt_ms)} ms, close to the ${Math.round(w.timeout_ms)} ms replication timeout: raise --election-timeout and --heartbeat (README: “Masters across regions”).</p>`
    : w.kind === "zone_majority"
    ? `<p class="warning" data-kind="zone_majority">Zone ${esc(w.zone)} holds ${w.masters.length} of the ${w.voters} voting masters (${w.masters.join(", ")}): losing that zone loses the cluster; run the masters in at least 3 zones.</p>`
    : `<p class="warning" data-kind="${esc(w.kind)}">${esc(JSON.stringify(w))}</p>`).join("");
  const zones = new Map();
  for (const w of v.workers) {
    const key = [w.labels.region, w.labels.zone].filter(Boolean).join(" / ") || "no region or zone";
    if (!zones.has(key)) zones.set(key, []);
    zones.get(key).push(w);
  }
  const zoneHtml = [...zones.entries()].sort().map(([zone, ws]) => `
    <div class="zone" data-zone="${esc(zone)}"><h3>${esc(zone)}</h3>
    ${ws.map((w) => {
      const pct = w.cpus_total ? Math.round((100 * w.cpus_busy) / w.cpus_total) : 0;
      const queued = w.cpus_queued ? ` +${w.cpus_queued} queued` : "";
      return `<div class="worker" data-name="${esc(w.name)}" data-state="${esc(w.state)}">
        <span>${esc(w.name)}</span>${badge(w.state)}
        <div class="load" title="${w.cpus_busy} of ${w.cpus_total} cpus busy, ${w.cpus_free} free, ${w.cpus_queued} queued"><div data-w="${pct}"></div></div>
        <span class="muted">${w.cpus_busy}/${w.cpus_total}${queued}</span></div>`;
    }).join("")}</div>`).join("");
  const pools = (v.pools || []).map((p) => `
    <tr class="pool" data-pool="${esc(p.pool)}" data-paused="${p.paused}">
      <td>${esc(p.pool)}</td><td>${esc(p.provider)}</td><td>${p.min}–${p.max}</td>
      <td data-count="joined">${p.joined}</td><td data-count="pending">${p.pending}</td><td data-count="retiring">${p.retiring}</td>
      <td>${p.paused ? badge("paused") : p.failures ? `${p.failures} failed` : badge("active")}</td>
      <td class="decision">${esc(p.last_decision || "–")}${p.last_failure ? `<br><span class="muted">last failure: ${esc(p.last_failure)}</span>` : ""}</td></tr>`).join("");
  return `<div class="tiles">${tiles}</div>
    ${chartsHtml(v)}
    ${warnings ? `<div id="warnings">${warnings}</div>` : ""}
    ${pools ? `<h2>Autoscaling</h2>
    <table id="pools"><tr><th>pool</th><th>provider</th><th>workers</th><th>joined</th><th>on the way</th><th>retiring</th><th>state</th><th>last decision</th></tr>${pools}</table>` : ""}
    <h2>Masters</h2>
    <table id="masters"><tr><th>id</th><th>address</th><th>role</th><th>term</th><th>applied</th><th>lag</th><th title="round trip from this page's master">rtt</th></tr>${masters}</table>
    <h2>Workers</h2>
    <div class="zones" id="workers">${zoneHtml || '<p class="muted">No worker has joined.</p>'}</div>`;
}

function rateOf(id) {
  const s = state.samples.get(id);
  if (!s || s.length < 2) return null;
  const [t0, d0] = s[0];
  const [t1, d1] = s[s.length - 1];
  return t1 > t0 ? ((d1 - d0) * 1000) / (t1 - t0) : null;
}

function progress(j) {
  const t = j.tasks;
  const total = Math.max(t.total, 1);
  const ok = (100 * t.succeeded) / total;
  const bad = (100 * (t.failed + t.cancelled)) / total;
  const pct = Math.floor(ok + bad);
  return `<div class="progress" data-job="${j.id}" data-pct="${pct}" title="${t.succeeded} succeeded, ${t.failed} failed, ${t.running} running, ${t.waiting} waiting">
    <div class="done" data-w="${ok}"></div><div class="fail" data-left="${ok}" data-w="${bad}"></div><span>${pct} %</span></div>`;
}

function jobsPage(v) {
  if (!v.jobs.length) return '<p class="muted">No jobs yet. Submit one with <code>flotilla submit</code>.</p>';
  const rows = v.jobs.map((j) => {
    const r = rateOf(j.id);
    return `<tr class="job" data-id="${j.id}" data-state="${esc(j.state)}">
      <td><a href="#/job/${j.id}">${j.id}</a></td><td>${esc(j.name || "")}</td><td>${badge(j.state)}</td>
      <td>${progress(j)}</td><td>${j.tasks.succeeded + j.tasks.failed + j.tasks.cancelled} / ${j.tasks.total}</td>
      <td>${j.tasks.failed ? `<b class="bad">${j.tasks.failed}</b>` : 0}</td>
      <td>${r == null || j.finished_at ? "–" : r.toFixed(1) + " /s"}</td><td class="muted">${esc(j.submitted_at)}</td></tr>`;
  }).join("");
  return `<h2>Jobs</h2><table id="jobs"><tr><th>id</th><th>name</th><th>state</th><th>progress</th><th>done</th><th>failed</th><th>rate</th><th>submitted</th></tr>${rows}</table>`;
}

async function loadJob(id) {
  const j = state.job;
  if (j && j.id === id && (j.loading || Date.now() - j.at < 1500)) return;
  state.job = { ...(j && j.id === id ? j : {}), id, loading: true, at: Date.now() };
  try {
    const r = await fetch(`${state.base}/ui/job/${id}`, { headers: headers(), cache: "no-store" });
    const body = await r.json();
    if (!r.ok) throw new Error(body.error || `HTTP ${r.status}`);
    const same = j && j.id === id && j.detail && JSON.stringify([j.detail, j.results]) === JSON.stringify([body.detail, body.results]);
    state.job = { id, detail: body.detail, results: body.results, at: Date.now() };
    if (same) return;
  } catch (e) {
    state.job = { id, error: String(e.message || e), at: Date.now() };
  }
  if (route().page === "job" && route().arg === String(id)) {
    $("#page").innerHTML = jobPage(id);
    bindFilters();
  }
}

function jobPage(id) {
  const j = state.job;
  if (!j || j.id !== id || (!j.detail && !j.error)) return `<p class="muted">Loading job ${id}…</p>`;
  if (j.error) return `<p>Job ${id}: ${esc(j.error)}</p>`;
  const d = j.detail;
  const f = state.jobFilter;
  const states = [...new Set(j.results.map((t) => t.state))].sort();
  const shown = j.results.filter((t) => (!f.state || t.state === f.state)
    && (!f.text || `${t.index} ${t.worker || ""} ${t.stdout} ${t.stderr}`.includes(f.text)));
  const rows = shown.map((t) => `<tr class="task" data-index="${t.index}" data-state="${esc(t.state)}">
    <td>${t.index}</td><td>${badge(t.state)}</td><td>${t.attempts}</td>
    <td>${t.attempt != null ? `attempt ${t.attempt}, term ${t.term}` : "–"}</td><td>${esc(t.worker || "–")}</td>
    <td>${t.exit_code ?? (t.signal != null ? "signal " + t.signal : t.timed_out ? "timed out" : esc(t.error || "–"))}</td>
    <td>${fmtMs(t.duration_ms)}</td>
    <td>${t.stdout || t.stderr ? `<details><summary>output</summary>${t.stdout ? `<pre>${esc(t.stdout)}</pre>` : ""}${t.stderr ? `<pre class="bad">${esc(t.stderr)}</pre>` : ""}</details>` : ""}</td></tr>`).join("");
  return `<h2>Job ${d.id} ${esc(d.name || "")} ${badge(d.state)}</h2>
    ${progress(d)}
    ${depsOf(d)}
    <p class="muted"><code>${esc(d.command.join(" "))}</code> · array ${esc(d.array || "–")} · ${d.cpus} cpu · retries ${d.retries}
      ${d.failure ? `· <b class="bad">${esc(d.failure)}</b>` : ""}${d.unschedulable ? ` · ${esc(d.unschedulable)}` : ""}</p>
    <div class="filters">State <select id="f-state"><option value="">all</option>${states.map((s) => `<option ${s === f.state ? "selected" : ""}>${esc(s)}</option>`).join("")}</select>
      Search <input id="f-text" value="${esc(f.text)}" placeholder="index, worker or output">
      <span class="muted">${shown.length} of ${j.results.length} tasks${j.results.length < d.tasks.total ? " (first " + j.results.length + ")" : ""}</span></div>
    <table id="tasks"><tr><th>task</th><th>state</th><th>attempts</th><th>recorded result</th><th>worker</th><th>exit</th><th>took</th><th>output</th></tr>${rows}</table>`;
}

// The job's place in the dependency graph: the jobs it needs, then it, then the jobs that
// need it; each a link, the ones still waited for marked.
function depsOf(d) {
  const waiting = new Set(d.waiting_on || []);
  const failed = d.upstream_failed ? d.upstream_failed.job : null;
  const chip = (id, rel) => `<a class="dep dep-${rel}${waiting.has(id) ? " dep-waiting" : ""}${id === failed ? " dep-failed" : ""}" data-job="${id}" data-rel="${rel}" href="#/job/${id}" title="${rel}">#${id}</a>`;
  const ups = [...(d.after || []).map((id) => chip(id, "after")), ...(d.after_finished || []).map((id) => chip(id, "after-finished")),
    ...(d.each || []).map((id) => chip(id, "each"))];
  if (d.rerun_of != null) ups.push(chip(d.rerun_of, "rerun-of"));
  const downs = (d.downstream || []).map((id) => chip(id, "downstream"));
  if (!ups.length && !downs.length && !d.needs) return "";
  const why = d.upstream_failed ? ` <span class="bad">cancelled: job ${d.upstream_failed.job} it needed ${esc(d.upstream_failed.state)}</span>` : "";
  const wait = waiting.size ? ` <span class="muted">waits for ${[...waiting].map((w) => "#" + w).join(", ")}</span>` : "";
  const needs = Object.entries(d.needs || {}).map(([t, n]) => `tasks ${esc(t)} need ${esc(n)}`).join("; ");
  const inner = needs ? ` <span id="task-needs" class="muted">${needs}${d.held ? ` (waiting: ${esc(d.held)})` : ""}</span>` : "";
  return `<div id="deps" class="deps"><span class="muted">needs</span> <span class="dep-col">${ups.join(" ") || "–"}</span> <span class="dep-arrow">→</span>
    <span class="dep dep-self">#${d.id}</span> <span class="dep-arrow">→</span> <span class="dep-col">${downs.join(" ") || "–"}</span> <span class="muted">need it</span>${wait}${why}${inner}</div>`;
}

function bindFilters() {
  const s = $("#f-state");
  const t = $("#f-text");
  const k = $("#f-kind");
  if (s) s.onchange = () => { state.jobFilter.state = s.value; $("#page").innerHTML = jobPage(state.job.id); bindFilters(); };
  if (t) t.onchange = () => { state.jobFilter.text = t.value; $("#page").innerHTML = jobPage(state.job.id); bindFilters(); };
  if (k) k.onchange = () => { state.kindFilter = k.value; render(); };
}

// Lanes of the timeline chart, by event kind.
const LANES = [
  ["masters", ["leader_elected", "master_unreachable", "master_reachable"]],
  ["workers", ["worker_joined", "worker_lost"]],
  ["autoscaling", ["scaled_up", "scaled_down", "launch_failed", "launch_ended"]],
  ["tasks", ["task_rescheduled", "task_failed", "result_rejected"]],
  ["jobs", ["job_submitted", "job_finished"]],
];
const BAD = new Set(["master_unreachable", "worker_lost", "task_failed", "result_rejected", "launch_failed"]);

function timelinePage(v) {
  const events = v.events;
  if (!events.length) return '<p class="muted">The journal is empty.</p>';
  const t0 = events[0].at_ms;
  const t1 = Math.max(events[events.length - 1].at_ms, t0 + 1);
  const W = 1000, left = 70, laneH = 26;
  const x = (t) => left + ((W - left - 10) * (t - t0)) / (t1 - t0);
  const laneOf = (kind) => LANES.findIndex(([, kinds]) => kinds.includes(kind));
  const marks = events.map((e) => {
    const lane = laneOf(e.kind);
    if (lane < 0) return "";
    const color = BAD.has(e.kind) ? "var(--bad)" : e.kind === "leader_elected" ? "var(--lead)" : "var(--ok)";
    return `<circle cx="${x(e.at_ms).toFixed(1)}" cy="${20 + lane * laneH}" r="4" fill="${color}"><title>${esc(e.time)} ${esc(e.message)}</title></circle>`;
  }).join("");
  const lanes = LANES.map(([name], i) => `<text x="4" y="${24 + i * laneH}">${name}</text><line x1="${left}" x2="${W - 10}" y1="${20 + i * laneH}" y2="${20 + i * laneH}" stroke="#e5e7eb"/>`).join("");
  const H = 20 + LANES.length * laneH;
  const kinds = [...new Set(events.map((e) => e.kind))].sort();
  const list = events.slice().reverse().filter((e) => !state.kindFilter || e.kind === state.kindFilter).slice(0, 200)
    .map((e) => `<tr class="event" data-kind="${esc(e.kind)}"><td class="muted">${esc(e.time)}</td><td>${badge(e.kind)}</td><td>${esc(e.message)}</td></tr>`).join("");
  return `<h2>Event timeline <span class="muted">(${esc(events[0].time)} – ${esc(events[events.length - 1].time)}, newest ${events.length} events)</span></h2>
    <svg class="timeline" viewBox="0 0 ${W} ${H + 10}" preserveAspectRatio="none" height="${H + 10}">${lanes}${marks}</svg>
    <div class="filters">Kind <select id="f-kind"><option value="">all</option>${kinds.map((k) => `<option ${k === state.kindFilter ? "selected" : ""}>${esc(k)}</option>`).join("")}</select></div>
    <table id="events"><tr><th>time</th><th>kind</th><th>what happened</th></tr>${list}</table>`;
}

// ---- charts over time ---------------------------------------------------------------------
// From the master's own samples (`history`: every 2 s, kept for 10 minutes on every master,
// so a page opened now sees the last minutes) and the journal's elections.

function seriesOf(history) {
  const rate = [], waiting = [], busy = [], total = [];
  for (let i = 0; i < history.length; i++) {
    const s = history[i];
    waiting.push([s.at_ms, s.waiting]);
    busy.push([s.at_ms, s.cpus_busy]);
    total.push([s.at_ms, s.cpus_total]);
    if (i > 0) {
      const p = history[i - 1];
      const dt = s.at_ms - p.at_ms;
      // Purged jobs take their finished tasks with them: never a negative rate.
      if (dt > 0) rate.push([s.at_ms, Math.max(0, s.done - p.done) * 1000 / dt]);
    }
  }
  return { rate, waiting, busy, total };
}

function fmtNum(n) {
  return n >= 100 ? Math.round(n).toString() : n >= 10 ? n.toFixed(1) : n.toFixed(2).replace(/\.?0+$/, "") || "0";
}

// One line chart: `lines` are [name, points, cssClass]; `marks` the elections' times.
function lineChart(key, title, lines, t0, t1, marks, unit) {
  const W = 320, H = 110, L = 34, B = 16;
  const ymax = Math.max(1, ...lines.flatMap(([, pts]) => pts.map((p) => p[1])));
  const x = (t) => L + ((W - L - 4) * (t - t0)) / Math.max(1, t1 - t0);
  const y = (v) => H - B - ((H - B - 6) * v) / ymax;
  const paths = lines.map(([name, pts, cls]) => pts.length
    ? `<polyline class="${cls}" points="${pts.map((p) => `${x(p[0]).toFixed(1)},${y(p[1]).toFixed(1)}`).join(" ")}"><title>${esc(name)}</title></polyline>` : "").join("");
  const elections = marks.map((e) => `<line class="election" x1="${x(e.at_ms).toFixed(1)}" x2="${x(e.at_ms).toFixed(1)}" y1="4" y2="${H - B}"><title>${esc(e.time)} ${esc(e.message)}</title></line>`).join("");
  const main = lines[0][1];
  const last = main.length ? main[main.length - 1][1] : 0;
  const peak = Math.max(0, ...main.map((p) => p[1]));
  const span = t1 - t0 < 60000 ? `${Math.round((t1 - t0) / 1000)} s` : `${Math.round((t1 - t0) / 60000)} min`;
  return `<figure class="chart" data-chart="${key}" data-points="${main.length}" data-last="${last}" data-peak="${peak}">
    <figcaption>${esc(title)} <b>${fmtNum(last)}${unit}</b></figcaption>
    <svg viewBox="0 0 ${W} ${H}" preserveAspectRatio="none">
      <line class="axis" x1="${L}" x2="${W - 4}" y1="${H - B}" y2="${H - B}"/><line class="axis" x1="${L}" x2="${L}" y1="4" y2="${H - B}"/>
      <text x="2" y="12">${fmtNum(ymax)}</text><text x="2" y="${H - B}">0</text>
      <text x="${L}" y="${H - 3}">−${span}</text><text x="${W - 30}" y="${H - 3}">now</text>
      ${elections}${paths}</svg></figure>`;
}

function chartsHtml(v) {
  const h = v.history || [];
  if (h.length < 2) return '<div id="charts" class="charts"><p class="muted">Charts appear after a few seconds of samples.</p></div>';
  const t0 = h[0].at_ms, t1 = h[h.length - 1].at_ms;
  const s = seriesOf(h);
  const elections = v.events.filter((e) => e.kind === "leader_elected" && e.at_ms >= t0 && e.at_ms <= t1);
  const strip = elections.map((e) => `<span class="election-mark" data-term="${e.term ?? ""}" title="${esc(e.time)}">${esc(e.message)}</span>`).join(" ");
  return `<div id="charts" class="charts">
    ${lineChart("throughput", "tasks finished / s", [["finished per second", s.rate, "line-ok"]], t0, t1, elections, "")}
    ${lineChart("waiting", "waiting tasks", [["waiting", s.waiting, "line-wait"]], t0, t1, elections, "")}
    ${lineChart("cpus", "cpus in use", [["busy", s.busy, "line-busy"], ["offered", s.total, "line-total"]], t0, t1, elections, ` / ${h[h.length - 1].cpus_total}`)}
    <figure class="chart" data-chart="elections" data-points="${elections.length}"><figcaption>elections <b>${elections.length}</b></figcaption>
      <div class="elections">${strip || '<span class="muted">none in this window</span>'}</div></figure>
  </div>`;
}

// ---- the dependency graph -----------------------------------------------------------------
// The kept jobs linked by `after`, `after_finished` or `each` (`deps`: edges from the job
// needed to the job that needs it), in layers: a job right of every job it needs.

function graphPage(v) {
  const edges = v.deps || [];
  if (!edges.length) return '<h2>Dependencies</h2><p class="muted">No job depends on another yet (<code>flotilla submit --after JOB</code>, <code>--each JOB</code>).</p>';
  const jobs = new Map(v.jobs.map((j) => [j.id, j]));
  const ids = [...new Set(edges.flatMap((e) => [e.from, e.to]))].sort((a, b) => a - b);
  const ups = new Map(ids.map((id) => [id, edges.filter((e) => e.to === id).map((e) => e.from)]));
  const layer = new Map();
  const depth = (id, seen) => {
    if (layer.has(id)) return layer.get(id);
    if (seen.has(id)) return 0; // never a cycle, but never loop on one either
    seen.add(id);
    const d = Math.max(-1, ...ups.get(id).map((u) => depth(u, seen))) + 1;
    layer.set(id, d);
    return d;
  };
  ids.forEach((id) => depth(id, new Set()));
  const rows = new Map();
  const pos = new Map();
  for (const id of ids) {
    const l = layer.get(id);
    const r = rows.get(l) || 0;
    rows.set(l, r + 1);
    pos.set(id, [20 + l * 190, 20 + r * 46]);
  }
  const BW = 140, BH = 30;
  const W = 40 + (Math.max(...layer.values()) + 1) * 190, H = 40 + Math.max(...rows.values()) * 46;
  const lines = edges.map((e) => {
    const [x1, y1] = pos.get(e.from), [x2, y2] = pos.get(e.to);
    return `<path class="edge edge-${esc(e.rel)}" data-from="${e.from}" data-to="${e.to}" d="M${x1 + BW},${y1 + BH / 2} C${x1 + BW + 30},${y1 + BH / 2} ${x2 - 30},${y2 + BH / 2} ${x2},${y2 + BH / 2}"><title>#${e.to} ${esc(e.rel)} #${e.from}</title></path>`;
  }).join("");
  const nodes = ids.map((id) => {
    const [x, y] = pos.get(id);
    const j = jobs.get(id);
    const st = j ? j.state : "removed";
    const label = `#${id} ${j && j.name ? j.name : ""}`.slice(0, 20);
    return `<a href="#/job/${id}" class="node" data-job="${id}" data-state="${esc(st)}"><rect class="node-${esc(st)}" x="${x}" y="${y}" width="${BW}" height="${BH}" rx="5"/>
      <text x="${x + 8}" y="${y + 19}">${esc(label)}</text><title>job ${id}: ${esc(st)}</title></a>`;
  }).join("");
  return `<h2>Dependencies <span class="muted">(${ids.length} jobs; solid: after, dashed: after-finished, dotted: each)</span></h2>
    <svg id="graph" class="graph" viewBox="0 0 ${W} ${H}" width="${W}" height="${H}">${lines}${nodes}</svg>`;
}

streamForever();
