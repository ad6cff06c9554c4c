// Status view: headline numbers, the task stream (a Gantt per worker thread, coloured by task
// group, with transfers on a row per worker), progress per group, tasks/s and memory charts.
import { $, esc, fmtBytes, fmtNum, fmtSeconds, groupColor, chartIn, nsToMs } from "./util.js";
import { store, STREAM_WINDOW_MS as WINDOW_MS } from "./store.js";
import { renderWorkerMemory } from "./memory.js";

let stream = null, tps = null, mem = null, initialised = false;
// streamStats is what the task stream drew on its last render (read by the browser test):
// items drawn, tasks they cover (a span covers count tasks), busy nanoseconds they cover, and
// the window [from, to] in unix ms, and the scheduler's completed-task count of the frame drawn.
export const streamStats = { drawn: 0, tasks: 0, busy: 0, from: 0, to: 0, completed: 0 };

function init() {
  initialised = true;
  stream = chartIn($("#task-stream"));
  tps = chartIn($("#chart-tps"));
  mem = chartIn($("#chart-memory"));
  if (stream) {
    stream.setOption(streamBase());
    stream.on("click", (p) => { if (p.data?.key && p.data.kind === "task") location.hash = `#/task/${encodeURIComponent(p.data.key)}`; });
  }
  if (tps) tps.setOption(lineBase("tasks/s", (v) => fmtNum(Math.round(v))));
  if (mem) mem.setOption(lineBase("bytes", fmtBytes));
}

export function show() { if (!initialised) init(); }

export function render() {
  renderCards();
  renderProgress();
  if (stream) renderStream();
  renderWorkerMemory($("#worker-memory"));
  if (tps) tps.setOption({ series: [{ name: "tasks/s", data: store.series.map((p) => [p.t, p.tps]) }] });
  if (mem) renderMemoryChart();
}

function renderCards() {
  const t = store.totals || {};
  $("#stat-tps").textContent = fmtNum(Math.round(store.tps || 0));
  $("#stat-completed").textContent = fmtNum(t.completed);
  $("#stat-processing").textContent = fmtNum(t.processing);
  $("#stat-erred").textContent = fmtNum(t.erred);
  $("#stat-memory").textContent = `${fmtBytes(store.memory.managed)} / ${fmtBytes(store.memory.limit)}`;
  $("#stat-workers").textContent = fmtNum(store.workers.size);
}

const segments = ["memory", "released", "processing", "queued", "waiting", "no_worker", "erred"];

function renderProgress() {
  let total = 0, done = 0, erred = 0;
  const rows = [];
  for (const g of store.groups.values()) {
    total += g.total; done += g.done; erred += g.erred;
    const counts = { ...g, released: Math.max(g.done - g.memory, 0) };
    const bar = segments.map((s) => {
      const pct = g.total ? (100 * counts[s]) / g.total : 0;
      return pct > 0 ? `<span class="${s.replace("_", "-")}" style="width:${pct}%" title="${s}: ${counts[s]}"></span>` : "";
    }).join("");
    rows.push(`<div class="group" data-name="${esc(g.name)}" data-total="${g.total}" data-done="${g.done}" data-erred="${g.erred}">
      <div class="name" title="${esc(g.name)}"><span class="sw" style="background:${groupColor(g.name)};margin-left:0"></span>${esc(g.name)}</div><div class="bar">${bar}</div>
      <div class="count">${fmtNum(g.done)} / ${fmtNum(g.total)}${g.erred ? ` · ${g.erred} erred` : ""} · ${fmtBytes(g.nbytes)}</div></div>`);
  }
  $("#progress").innerHTML = rows.join("") || '<p class="muted">No tasks.</p>';
  const s = $("#progress-summary");
  s.dataset.total = total; s.dataset.done = done; s.dataset.erred = erred;
  s.textContent = total ? `${fmtNum(done)} of ${fmtNum(total)} tasks done${total === done ? " — complete" : ""}` : "";
}

// Rows: one per worker thread, then one per worker for transfers. A worker gets a row for every
// thread index its tasks reported, even beyond its nthreads (a task that seceded, or a Python
// executor lane), and a worker that left keeps its rows while its tasks are in the window.
function streamRows() {
  const ws = new Map([...store.workers.values()].map((w) => [w.address, { name: w.name, address: w.address, threads: Math.max(w.nthreads, 1) }]));
  for (const e of store.stream) {
    if (!e.worker) continue;
    const w = ws.get(e.worker) || { name: e.name || e.worker, address: e.worker, threads: 1 };
    if (e.kind === "task") w.threads = Math.max(w.threads, (e.thread || 0) + 1);
    ws.set(e.worker, w);
  }
  const rows = [], index = new Map();
  for (const w of [...ws.values()].sort((a, b) => a.name.localeCompare(b.name))) {
    for (let t = 0; t < w.threads; t++) {
      index.set(`${w.address}#${t}`, rows.length);
      rows.push(`${w.name}:${t}`);
    }
    index.set(`${w.address}#x`, rows.length);
    rows.push(`${w.name} ⇄`);
  }
  return { rows, index };
}

const streamColors = { transfer: "#d64545", spill: "#6b6b6b" };

function renderStream() {
  const { rows, index } = streamRows();
  const now = nsToMs(store.time || Date.now() * 1e6);
  const data = [];
  let first = now, tasks = 0, busy = 0;
  for (const e of store.stream) {
    const stop = nsToMs(e.stop);
    if (stop < now - WINDOW_MS) continue;
    const row = index.get(e.kind === "task" ? `${e.worker}#${e.thread || 0}` : `${e.worker}#x`);
    if (row === undefined) continue;
    const start = nsToMs(e.start);
    first = Math.min(first, start);
    const color = streamColors[e.kind] || (e.state === "erred" ? "#111" : groupColor(e.group || ""));
    // a span is drawn as dense as its tasks kept the thread busy
    const fill = e.count ? Math.max(0.35, Math.min(1, e.busy / Math.max(e.stop - e.start, 1))) : 1;
    data.push({ value: [row, start, stop], key: e.key, group: e.group, kind: e.kind, nbytes: e.nbytes, count: e.count || 0,
      busy: e.busy || 0, name: e.name, itemStyle: { color, opacity: e.kind === "task" ? fill : 0.7 } });
    if (e.kind === "task") { tasks += e.count || 1; busy += e.count ? e.busy : e.stop - e.start; }
  }
  Object.assign(streamStats, { drawn: data.length, tasks, busy, from: now - WINDOW_MS, to: now, completed: store.totals.completed || 0 });
  const el = $("#task-stream");
  el.dataset.drawn = data.length; el.dataset.tasks = tasks;
  stream.setOption({
    xAxis: { min: Math.max(now - WINDOW_MS, first - 500), max: now },
    yAxis: { data: rows },
    series: [{ data }],
  });
}

function streamTooltip(p) {
  const d = p.data, ms = d.value[2] - d.value[1];
  if (d.kind === "spill") return `${esc(d.name)} spilled ${fmtBytes(d.nbytes)} to disk`;
  if (d.kind === "transfer") {
    return d.count ? `${d.count} transfers of ${esc(d.group)} to ${esc(d.name)}<br>${fmtBytes(d.nbytes)}`
      : `transfer ${esc(d.key)} to ${esc(d.name)}<br>${fmtBytes(d.nbytes)}`;
  }
  if (d.count) {
    return `${fmtNum(d.count)} tasks of <b>${esc(d.group)}</b> (aggregated)<br>busy ${fmtSeconds(d.busy / 1e9)} of
      ${fmtSeconds(ms / 1e3)}<br>results ${fmtBytes(d.nbytes)}`;
  }
  return `<b>${esc(d.key)}</b><br>group ${esc(d.group)}<br>${fmtSeconds(ms / 1e3)} · result ${fmtBytes(d.nbytes)}<br>
    <span style="color:#888">click for its story</span>`;
}

function streamBase() {
  return {
    animation: false,
    grid: { left: 110, right: 20, top: 10, bottom: 30 },
    tooltip: { formatter: streamTooltip },
    xAxis: { type: "time", axisLabel: { hideOverlap: true } },
    yAxis: { type: "category", inverse: true, data: [], axisLabel: { fontSize: 11 } },
    series: [{
      type: "custom",
      encode: { x: [1, 2], y: 0 },
      renderItem: (params, api) => {
        const row = api.value(0), a = api.coord([api.value(1), row]), b = api.coord([api.value(2), row]);
        const h = api.size([0, 1])[1] * 0.7;
        const rect = window.echarts.graphic.clipRectByRect(
          { x: a[0], y: a[1] - h / 2, width: Math.max(b[0] - a[0], 1), height: h },
          { x: params.coordSys.x, y: params.coordSys.y, width: params.coordSys.width, height: params.coordSys.height });
        return rect && { type: "rect", shape: rect, style: api.style() };
      },
      data: [],
    }],
  };
}

// The memory chart's scale follows use: the limit is drawn only when use comes within a
// quarter of it, otherwise it is written in the legend, so a few MiB under a 23 GiB limit
// still show as a curve.
function renderMemoryChart() {
  const pts = store.series;
  const peak = pts.reduce((m, p) => Math.max(m, p.managed, p.used, p.spilled), 0);
  const limit = store.memory.limit || 0;
  const showLimit = limit > 0 && peak > limit / 4;
  mem.setOption({
    yAxis: { max: showLimit ? limit * 1.05 : null },
    legend: { formatter: (n) => (n === "limit" && !showLimit ? `limit ${fmtBytes(limit)} (off scale)` : n) },
    series: [
      { name: "managed", data: pts.map((p) => [p.t, p.managed]) },
      { name: "spilled", data: pts.map((p) => [p.t, p.spilled]) },
      { name: "limit", data: showLimit ? pts.map((p) => [p.t, p.limit]) : [] },
    ],
  });
}

function lineBase(unit, fmt) {
  return {
    animation: false,
    grid: { left: 70, right: 20, top: 20, bottom: 30 },
    tooltip: { trigger: "axis", valueFormatter: fmt },
    legend: { top: 0, right: 10, textStyle: { fontSize: 11 } },
    xAxis: { type: "time", axisLabel: { hideOverlap: true } },
    yAxis: { type: "value", axisLabel: { formatter: fmt } },
    series: unit === "bytes"
      ? [["managed", "#3b7fc4"], ["spilled", "#8c8c8c"], ["limit", "#d64545"]].map(([n, color]) => ({ name: n, type: "line",
        showSymbol: false, data: [], color, lineStyle: n === "limit" ? { type: "dashed" } : undefined,
        areaStyle: n === "limit" ? undefined : { opacity: 0.25 } }))
      : [{ name: unit, type: "line", showSymbol: false, data: [], areaStyle: { opacity: 0.2 } }],
  };
}
