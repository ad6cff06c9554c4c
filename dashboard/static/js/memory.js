// Per-worker memory bars, in dask's colours: managed (results the worker holds) dark blue,
// unmanaged (the rest of the process's memory, when the worker reports it) light blue, spilled
// to disk grey; the bar turns orange above 80 % of the limit and red above 95 %. All bars share
// one scale that follows use (the largest worker's total plus a margin); the limit is drawn as
// a line when it falls on that scale and written as text otherwise.
import { esc, fmtBytes } from "./util.js";
import { store } from "./store.js";

export function workerMemory(w) {
  const managed = Math.max(w.managed || 0, 0);
  const unmanaged = w.process_memory ? Math.max(w.process_memory - managed, 0) : 0;
  return { managed, unmanaged, spilled: w.spilled || 0, limit: w.memory_limit || 0 };
}

export function renderWorkerMemory(el) {
  if (!el) return;
  const ws = [...store.workers.values()].sort((a, b) => a.name.localeCompare(b.name));
  const mems = ws.map(workerMemory);
  const peak = mems.reduce((m, x) => Math.max(m, x.managed + x.unmanaged + x.spilled), 0);
  const scale = Math.max(peak * 1.25, 1 << 20);
  el.innerHTML = ws.map((w, i) => {
    const m = mems[i], inMem = m.managed + m.unmanaged;
    const frac = m.limit ? inMem / m.limit : 0;
    const state = frac > 0.95 ? "paused" : frac > 0.8 ? "high" : "";
    const pct = (n) => `${Math.min(100, (100 * n) / scale).toFixed(2)}%`;
    const limitMark = m.limit && m.limit <= scale ? `<i class="limit" style="left:${pct(m.limit)}" title="limit ${fmtBytes(m.limit)}"></i>` : "";
    return `<div class="wmem ${state}" data-address="${esc(w.address)}" data-managed="${m.managed}" data-unmanaged="${m.unmanaged}"
      data-spilled="${m.spilled}" data-limit="${m.limit}">
      <div class="name" title="${esc(w.address)}">${esc(w.name)}</div>
      <div class="mbar" title="managed ${fmtBytes(m.managed)} · unmanaged ${fmtBytes(m.unmanaged)} · spilled ${fmtBytes(m.spilled)} · limit ${fmtBytes(m.limit)}">
        <span class="managed" style="width:${pct(m.managed)}"></span><span class="unmanaged" style="width:${pct(m.unmanaged)}"></span><span class="spilled" style="width:${pct(m.spilled)}"></span>${limitMark}
      </div>
      <div class="count">${fmtBytes(inMem)}${m.spilled ? ` + ${fmtBytes(m.spilled)} spilled` : ""} / ${fmtBytes(m.limit)}</div></div>`;
  }).join("") || '<p class="muted">No workers.</p>';
}
