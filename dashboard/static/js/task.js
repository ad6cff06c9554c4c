// Task view: one task by key, from /api/v1/tasks/{key}; refreshed every second while it is
// not in a final state.
import { $, esc, fmtBytes, fmtSeconds, fmtTime, taskLink, getJSON } from "./util.js";
import { drawFlame } from "./flame.js";

let key = "", timer = null, liveKey = "";
const final = new Set(["memory", "erred", "released", "forgotten"]);

export function show(arg) {
  key = arg;
  $("#task-search-input").value = key;
  clearTimeout(timer);
  if (key) load();
}

export function hide() { clearTimeout(timer); }

async function load() {
  const k = key;
  const r = await getJSON(`api/v1/tasks/${encodeURIComponent(k)}`);
  if (k !== key) return;
  const el = $("#task");
  if (r.status === 404) {
    el.innerHTML = `<p>No task with key <code>${esc(k)}</code> (it may never have existed or may have been forgotten).</p>`;
    return;
  }
  if (!r.ok) {
    el.innerHTML = `<p>Could not load <code>${esc(k)}</code>: ${esc(r.body.error)}</p>`;
  } else {
    const keepLive = liveKey === k ? $("#task-live-stack-text")?.textContent : ""; // a refresh keeps it
    el.innerHTML = renderTask(r.body);
    if (keepLive && $("#task-live-stack-text")) $("#task-live-stack-text").textContent = keepLive;
    const btn = $("#task-live-stack");
    if (btn) btn.onclick = () => loadLiveStack(k);
    if (btn && !keepLive) loadLiveStack(k);
    loadStacks(r.body);
  }
  if (!r.ok || !final.has(r.body.state)) timer = setTimeout(load, 1000);
}

function renderTask(t) {
  const dur = t.start && t.stop ? fmtSeconds((t.stop - t.start) / 1e9) : "–";
  const deps = t.deps.map((d) => `<tr><td>${taskLink(d.key)}</td><td>${state(d.state)}</td>
    <td class="num">${fmtBytes(d.nbytes)}</td><td class="mono">${esc((d.who_has || []).join(", "))}</td></tr>`).join("");
  const story = t.story.map((s) => `<tr><td>${fmtTime(s.time)}</td><td>${state(s.from)} → ${state(s.to)}</td>
    <td>${esc(s.cause)}</td><td class="mono">${esc(s.worker || "")}</td><td class="num">${s.event_id || ""}</td></tr>`).join("");
  const err = t.error ? `<h2>Error</h2><div class="error-box"><p><b>${esc(t.error.type || t.error.code)}</b>: ${esc(t.error.message)}</p>
    ${t.error.traceback ? `<pre>${esc(t.error.traceback)}</pre>` : ""}</div>` : "";
  const dependents = (t.dependents || []).slice(0, 100).map(taskLink).join(", ");
  return `<h2 class="mono">${esc(t.key)}</h2>
    <dl class="kv">
      <dt>State</dt><dd id="task-state">${state(t.state)}</dd>
      <dt>Group</dt><dd>${esc(t.group)}</dd>
      <dt>Worker</dt><dd>${esc(t.worker || "–")}</dd>
      <dt>Duration</dt><dd>${dur}</dd>
      <dt>Started</dt><dd>${fmtTime(t.start)}</dd>
      <dt>Result size</dt><dd>${fmtBytes(t.nbytes)}</dd>
      <dt>Held by</dt><dd>${esc((t.who_has || []).join(", ") || "–")}</dd>
      <dt>Priority</dt><dd>${t.priority}</dd>
      <dt>Retries left</dt><dd>${t.retries}</dd>
      <dt>Dependents</dt><dd>${dependents || "–"}</dd>
    </dl>
    ${err}
    ${t.state === "processing" ? `<h2>Call stack now <button id="task-live-stack" type="button">Refresh</button></h2>
      <pre id="task-live-stack-text" class="muted">Reading the stack from the worker…</pre>
      <h2>Call stacks sampled <span class="hint" id="task-stacks-note"></span></h2>
      <div id="task-stacks" class="flame"></div>` : ""}
    <h2>Inputs</h2>
    ${deps ? `<table><thead><tr><th>Key</th><th>State</th><th>Size</th><th>Held by</th></tr></thead><tbody>${deps}</tbody></table>` : '<p class="muted">None.</p>'}
    <h2>Story</h2>
    <table><thead><tr><th>Time</th><th>Transition</th><th>Cause</th><th>Worker</th><th>Event</th></tr></thead><tbody>${story}</tbody></table>`;
}

const colors = { memory: "var(--memory)", processing: "var(--processing)", queued: "var(--queued)",
  waiting: "var(--waiting)", released: "var(--released)", erred: "var(--erred)", "no-worker": "var(--no-worker)" };
function state(s) {
  return `<span class="state ${esc(s)}" style="background:${colors[s] || "#888"}">${esc(s)}</span>`;
}

// The call stack of a running task right now, read from its worker (a Python task: its
// executor's threads, dumped at once even inside C code; a Go task: the goroutines running Go
// tasks there).
async function loadLiveStack(k) {
  const pre = $("#task-live-stack-text");
  if (!pre) return;
  const r = await getJSON(`api/v1/stack/${encodeURIComponent(k)}`);
  if (k !== key || !$("#task-live-stack-text")) return;
  pre.classList.toggle("muted", !r.ok);
  liveKey = k;
  pre.textContent = r.ok ? `on ${r.body.worker}\n\n${r.body.lines.join("\n")}` : (r.body.error || "unavailable");
}

// Call stacks of a running task: the statistical profiler's samples of its task group (the
// executor samples the running task's thread every ~10 ms while the profiler is on).
async function loadStacks(t) {
  const box = $("#task-stacks");
  if (!box) return;
  const r = await getJSON(`api/v1/profile?group=${encodeURIComponent(t.group)}`);
  if (!r.ok) { $("#task-stacks-note").textContent = r.body.error || "unavailable"; return; }
  const root = (r.body.groups || {})[t.group];
  const n = drawFlame(box, root);
  $("#task-stacks-note").innerHTML = n ? `${root.count} samples of group <b>${esc(t.group)}</b>${r.body.enabled ? "" : " (profiler off: these are from when it ran)"}`
    : r.body.enabled ? "No samples of this group yet (the profiler samples every ~10 ms)."
    : 'The profiler is off: <a href="#/profile">start it</a> to see the call stacks of running tasks.';
}
