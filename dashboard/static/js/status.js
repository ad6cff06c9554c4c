// Status view: headline numbers, the task stream (a Gantt per worker thread, coloured by task
// group, with transfers on a row per worker), progress per group, tasks/s and memory charts.
import { $, esc, fmtBytes, fmtNum, groupColor, chartIn, nsToMs } from "./util.js";
import { store } from "./store.js";

const WINDOW_MS = 30000;
let stream = null, tps = null, mem = null, initialised = false;

function init() {
  initialised = true;
  stream = chartIn($("#task-stream"));
  tps = chartIn($("#chart-tps"));
  mem = chartIn($("#chart-memory"));
  if (stream) {
    stream.setOption(streamBase());
    stream.on("click", (p) => { if (p.data?.key) location.hash = `#/task/${encodeURIComponent(p.data.key)}`; });
  }
  if (tps) tps.setOption(lineBase("tasks/s", (v) => fmtNum(Math.round(v))));
  if (mem) mem.setOption(lineBase("bytes", fmtBytes));
}

export function show() { if (!initialised) init(); }

export function render() {
  renderCards();
  renderProgress();
  if (stream) renderStream();
  if (tps) tps.setOption({ series: [{ name: "tasks/s", data: store.series.map((p) => [p.t, p.tps]) }] });
  if (mem) mem.setOption({ series: [
    { name: "used", data: store.series.map((p) => [p.t, p.used]) },
    { name: "limit", data: store.series.map((p) => [p.t, p.limit]) },
    { name: "spilled", data: store.series.map((p) => [p.t, p.spilled]) },
  ] });
}

function renderCards() {
  const t = store.totals || {};
  $("#stat-tps").textContent = fmtNum(Math.round(store.tps || 0));
  $("#stat-completed").textContent = fmtNum(t.completed);
  $("#stat-processing").textContent = fmtNum(t.processing);
  $("#stat-erred").textContent = fmtNum(t.erred);
  $("#stat-memory").textContent = `${fmtBytes(store.memory.used)} / ${fmtBytes(store.memory.limit)}`;
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

// Rows: one per worker thread, then one per worker for transfers.
function streamRows() {
  const ws = [...store.workers.values()].sort((a, b) => a.name.localeCompare(b.name));
  const rows = [], index = new Map();
  for (const w of ws) {
    for (let t = 0; t < Math.max(w.nthreads, 1); t++) {
      index.set(`${w.address}#${t}`, rows.length);
      rows.push(`${w.name}:${t}`);
    }
    index.set(`${w.address}#x`, rows.length);
    rows.push(`${w.name} ⇄`);
  }
  return { rows, index };
}

function renderStream() {
  const { rows, index } = streamRows();
  const now = nsToMs(store.time || Date.now() * 1e6);
  const data = [];
  let first = now;
  for (const e of store.stream) {
    const stop = nsToMs(e.stop);
    if (stop < now - WINDOW_MS) continue;
    const row = index.get(e.kind === "transfer" ? `${e.worker}#x` : `${e.worker}#${e.thread || 0}`);
    if (row === undefined) continue;
    first = Math.min(first, nsToMs(e.start));
    const color = e.kind === "transfer" ? "#d64545" : e.state === "erred" ? "#111" : groupColor(e.group || "");
    data.push({ value: [row, nsToMs(e.start), stop], key: e.key, group: e.group, kind: e.kind, nbytes: e.nbytes,
      itemStyle: { color, opacity: e.kind === "transfer" ? 0.6 : 1 } });
  }
  stream.setOption({
    xAxis: { min: Math.max(now - WINDOW_MS, first - 500), max: now },
    yAxis: { data: rows },
    series: [{ data }],
  });
}

function streamBase() {
  return {
    animation: false,
    grid: { left: 110, right: 20, top: 10, bottom: 30 },
    tooltip: { formatter: (p) => {
      const d = p.data, ms = (d.value[2] - d.value[1]).toFixed(1);
      return d.kind === "transfer" ? `transfer ${esc(d.key)}<br>${fmtBytes(d.nbytes)} in ${ms} ms`
        : `${esc(d.key)}<br>group ${esc(d.group)}<br>${ms} ms`;
    } },
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

function lineBase(unit, fmt) {
  return {
    animation: false,
    grid: { left: 70, right: 20, top: 20, bottom: 30 },
    tooltip: { trigger: "axis", valueFormatter: fmt },
    legend: { top: 0, right: 10, textStyle: { fontSize: 11 } },
    xAxis: { type: "time", axisLabel: { hideOverlap: true } },
    yAxis: { type: "value", axisLabel: { formatter: fmt } },
    series: unit === "bytes"
      ? ["used", "limit", "spilled"].map((n) => ({ name: n, type: "line", showSymbol: false, data: [],
        lineStyle: n === "limit" ? { type: "dashed" } : undefined, areaStyle: n === "used" ? { opacity: 0.2 } : undefined }))
      : [{ name: unit, type: "line", showSymbol: false, data: [], areaStyle: { opacity: 0.2 } }],
  };
}
