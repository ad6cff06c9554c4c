// The page's model of the cluster, built from websocket frames. A full frame replaces
// workers and groups; a delta frame updates those that changed and removes those listed.
//
// The task stream keeps every task event of the last STREAM_WINDOW_MS: single events (with a
// key, for hover and click) and aggregate spans (count > 0) that the scheduler's dashboard
// sends when a frame holds more tasks than it carries one by one. When the page holds more
// than STREAM_ITEMS items, its oldest items are merged into spans per row, group and second,
// so the page stays fast at 100k tasks/s and still covers every task that ran.

const SERIES_POINTS = 600; // ~60 s at 10 frames per second
export const STREAM_WINDOW_MS = 30000;
const STREAM_ITEMS = 20000;
const CLUSTER_EVENTS = 2000;

export const store = {
  workers: new Map(), // address -> WorkerStatus
  groups: new Map(), // name -> GroupProgress (insertion order = first seen)
  totals: {},
  memory: { used: 0, limit: 0, spilled: 0, managed: 0 },
  tps: 0,
  time: 0, // unix ns of the last snapshot
  series: [], // {t (ms), tps, used, limit, spilled, managed, completed}
  stream: [], // task, transfer and spill events; aggregates have count > 0
  cluster: [], // cluster events received live
  dropped: 0, // frames dropped for this page (their task events are fetched again: gaps)
  gaps: [], // [from, to] unix ns windows whose task events were in dropped frames
  unfilled: 0, // gaps that could not be fetched again: the stream truly misses them
  lastFrame: 0, // time of the last frame applied
  reconnected: false, // the websocket reconnected: the next frame closes a gap
  aggregated: 0, // task-stream events received in spans (not lost)
  lost: 0, // task-stream events this page missed: see lostCount()
  sourceDropped0: -1, // source_dropped when this page connected
  sourceDropped: 0,
  error: "",
  frames: 0,
  groupsVersion: 0, // bumped when the set of group names changes
};

// fillGap adds the task runs of a window whose frames were dropped, as the scheduler recorded
// them (it records while a viewer is connected), skipping those the page already has.
export function fillGap(rec) {
  const have = new Set(store.stream.filter((e) => e.key).map((e) => `${e.key}|${e.start}`));
  for (const t of rec.tasks || []) {
    if (have.has(`${t.key}|${t.start}`)) continue;
    store.stream.push({ kind: "task", key: t.key, group: t.group, worker: t.worker, name: t.worker_name, thread: t.thread,
      start: t.start, stop: t.stop, time: t.stop, nbytes: t.nbytes, state: t.erred ? "erred" : "memory" });
  }
  trimStream();
}

// lostCount is how many task-stream events this page truly missed since it connected: events
// the scheduler side could not queue for the dashboard and events beyond a frame's span budget
// (frames dropped because the page was slow are fetched again; see gaps).
export function lostCount() {
  const src = store.sourceDropped0 < 0 ? 0 : store.sourceDropped - store.sourceDropped0;
  return src + store.lost;
}

// resetConnection is called when the websocket (re)connects: the first frame then sets the
// loss baseline again, and the window the page was disconnected is fetched as a gap.
export function resetConnection() { store.sourceDropped0 = -1; store.reconnected = store.lastFrame > 0; }

export function applyFrame(env) {
  const f = env.frame;
  if ((env.dropped > store.dropped || store.reconnected) && store.lastFrame && f.time) store.gaps.push([store.lastFrame, f.time]);
  store.reconnected = false;
  store.dropped = env.dropped;
  if (f.time) store.lastFrame = f.time;
  store.frames++;
  store.error = f.error || "";
  store.aggregated += f.events_aggregated || 0;
  store.lost += f.events_lost || 0;
  if (!f.error) applySnapshot(f);
  for (const e of f.events) {
    if (e.kind === "task" || e.kind === "transfer") store.stream.push(e);
    else store.cluster.push(e);
  }
  trimStream();
  if (store.cluster.length > CLUSTER_EVENTS) store.cluster.splice(0, store.cluster.length - CLUSTER_EVENTS);
}

// trimStream drops what left the window and, above STREAM_ITEMS, merges the oldest half.
function trimStream() {
  const from = store.time - STREAM_WINDOW_MS * 1e6;
  if (store.stream.length && store.stream[0].stop < from) store.stream = store.stream.filter((e) => e.stop >= from);
  if (store.stream.length <= STREAM_ITEMS) return;
  store.stream.sort((a, b) => a.stop - b.stop);
  const half = store.stream.length >> 1;
  const merged = new Map();
  for (const e of store.stream.slice(0, half)) {
    const k = `${e.kind}|${e.worker}|${e.thread || 0}|${e.group}|${e.state === "erred"}|${Math.floor(e.stop / 1e9)}`;
    const m = merged.get(k);
    const busy = e.count ? e.busy : e.stop - e.start;
    if (!m) {
      merged.set(k, { kind: e.kind, worker: e.worker, name: e.name, thread: e.thread, group: e.group, state: e.state,
        start: e.start, stop: e.stop, time: e.time, count: e.count || 1, busy, nbytes: e.nbytes || 0 });
      continue;
    }
    m.start = Math.min(m.start, e.start); m.stop = Math.max(m.stop, e.stop);
    m.count += e.count || 1; m.busy += busy; m.nbytes += e.nbytes || 0;
  }
  store.stream = [...merged.values(), ...store.stream.slice(half)];
}

function applySnapshot(f) {
  const names = store.groups.size;
  if (store.sourceDropped0 < 0) store.sourceDropped0 = f.source_dropped;
  if (f.full) {
    store.workers.clear();
    const old = [...store.groups.keys()].join("\n");
    store.groups.clear();
    for (const g of f.groups) store.groups.set(g.name, g);
    if ([...store.groups.keys()].join("\n") !== old) store.groupsVersion++;
  } else {
    for (const g of f.groups) {
      if (!store.groups.has(g.name)) store.groupsVersion++;
      store.groups.set(g.name, g);
    }
    for (const n of f.groups_removed || []) { store.groups.delete(n); store.groupsVersion++; }
    for (const a of f.workers_removed || []) store.workers.delete(a);
  }
  for (const w of f.workers) {
    const old = store.workers.get(w.address);
    if (old && w.spilled > old.spilled) { // spilling shows on the worker's transfer row
      store.stream.push({ kind: "spill", worker: w.address, name: w.name, start: (old.last_seen || w.last_seen) * 1e9,
        stop: w.last_seen * 1e9, time: f.time, nbytes: w.spilled - old.spilled });
    }
    store.workers.set(w.address, w);
  }
  if (names !== store.groups.size) store.groupsVersion++;
  store.totals = f.totals;
  store.memory = f.memory;
  store.tps = f.tasks_per_second;
  store.time = f.time;
  store.sourceDropped = f.source_dropped;
  store.series.push({ t: f.time / 1e6, tps: f.tasks_per_second, used: f.memory.used, limit: f.memory.limit,
    spilled: f.memory.spilled, managed: f.memory.managed || 0, completed: f.totals.completed });
  if (store.series.length > SERIES_POINTS) store.series.splice(0, store.series.length - SERIES_POINTS);
}
