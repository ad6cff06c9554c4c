// The page's model of the cluster, built from websocket frames. A full frame replaces
// workers and groups; a delta frame updates those that changed and removes those listed.

const SERIES_POINTS = 600; // ~60 s at 10 frames per second
const STREAM_EVENTS = 4000; // task-stream rectangles kept
const CLUSTER_EVENTS = 2000;

export const store = {
  workers: new Map(), // address -> WorkerStatus
  groups: new Map(), // name -> GroupProgress (insertion order = first seen)
  totals: {},
  memory: { used: 0, limit: 0, spilled: 0 },
  tps: 0,
  time: 0, // unix ns of the last snapshot
  series: [], // {t (ms), tps, used, limit, spilled}
  stream: [], // task and transfer events
  cluster: [], // cluster events received live
  dropped: 0, // frames dropped for this page
  sourceDropped: 0,
  truncated: 0,
  error: "",
  frames: 0,
  groupsVersion: 0, // bumped when the set of group names changes
};

export function applyFrame(env) {
  const f = env.frame;
  store.dropped = env.dropped;
  store.frames++;
  store.error = f.error || "";
  store.truncated += f.events_truncated || 0;
  if (!f.error) applySnapshot(f);
  for (const e of f.events) {
    if (e.kind === "task" || e.kind === "transfer") store.stream.push(e);
    else store.cluster.push(e);
  }
  if (store.stream.length > STREAM_EVENTS) store.stream.splice(0, store.stream.length - STREAM_EVENTS);
  if (store.cluster.length > CLUSTER_EVENTS) store.cluster.splice(0, store.cluster.length - CLUSTER_EVENTS);
}

function applySnapshot(f) {
  const names = store.groups.size;
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
  for (const w of f.workers) store.workers.set(w.address, w);
  if (names !== store.groups.size) store.groupsVersion++;
  store.totals = f.totals;
  store.memory = f.memory;
  store.tps = f.tasks_per_second;
  store.time = f.time;
  store.sourceDropped = f.source_dropped;
  store.series.push({ t: f.time / 1e6, tps: f.tasks_per_second, used: f.memory.used, limit: f.memory.limit, spilled: f.memory.spilled });
  if (store.series.length > SERIES_POINTS) store.series.splice(0, store.series.length - SERIES_POINTS);
}
