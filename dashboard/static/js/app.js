// Entry point: websocket connection, hash routing (#/status, #/workers, #/graph,
// #/profile[/<group>], #/task/<key>, #/events) and render scheduling. Only the visible view is rendered, at most
// once per animation frame.
import { $, hasCharts } from "./util.js";
import { store, applyFrame, lostCount, resetConnection, fillGap } from "./store.js";
import * as status from "./status.js";
import * as workers from "./workers.js";
import * as graph from "./graph.js";
import * as task from "./task.js";
import * as events from "./events.js";
import * as profile from "./profile.js";

const views = { status, workers, graph, task, events, profile };
let current = null;
let renderQueued = false;

function route() {
  const h = location.hash.replace(/^#\/?/, "");
  const [name, ...rest] = h.split("/");
  const view = views[name] ? name : "status";
  for (const v of Object.keys(views)) $(`#view-${v}`).hidden = v !== view;
  for (const a of document.querySelectorAll("nav a")) a.classList.toggle("active", a.dataset.view === view);
  const arg = rest.length ? decodeURIComponent(rest.join("/")) : "";
  if (current !== view && current) views[current].hide?.();
  current = view;
  views[view].show?.(arg);
  scheduleRender();
}

function scheduleRender() {
  if (renderQueued) return;
  renderQueued = true;
  requestAnimationFrame(() => {
    renderQueued = false;
    renderHeader();
    views[current].render?.();
  });
}

// fillGaps fetches again the task runs of frames this page dropped (it was too slow), from the
// scheduler's recording, one window at a time.
let filling = false;
async function fillGaps() {
  if (filling || !store.gaps.length) return;
  filling = true;
  const [from, to] = store.gaps.shift();
  try {
    const r = await fetch(`api/v1/task-stream?start=${from}&stop=${to}`, { cache: "no-store" });
    if (!r.ok) throw new Error(`HTTP ${r.status}`);
    fillGap(await r.json());
  } catch {
    store.unfilled++;
  } finally {
    filling = false;
    scheduleRender();
    fillGaps();
  }
}

function renderHeader() {
  const d = $("#dropped");
  d.hidden = store.unfilled === 0;
  d.textContent = `${store.unfilled} dropped frames missing from the stream`;
  const sd = $("#source-dropped"), lost = lostCount();
  sd.hidden = lost === 0;
  sd.textContent = `${lost} task-stream events missed`;
  const hint = $("#stream-hint");
  if (hint) hint.textContent = store.aggregated ? `${store.aggregated.toLocaleString("en-US")} tasks shown in aggregate spans` : "";
  const e = $("#error");
  e.hidden = !store.error;
  e.textContent = store.error ? `Scheduler did not answer: ${store.error}` : "";
}

let backoff = 500;
function connect() {
  const url = new URL("ws", location.href);
  url.protocol = location.protocol === "https:" ? "wss:" : "ws:";
  const ws = new WebSocket(url);
  const conn = $("#conn");
  ws.onopen = () => { backoff = 500; resetConnection(); conn.textContent = "live"; conn.classList.remove("off"); };
  ws.onmessage = (m) => {
    applyFrame(JSON.parse(m.data));
    fillGaps();
    scheduleRender();
  };
  ws.onclose = () => {
    conn.textContent = "disconnected";
    conn.classList.add("off");
    setTimeout(connect, backoff);
    backoff = Math.min(backoff * 2, 10000);
  };
}

$("#task-search").addEventListener("submit", (ev) => {
  ev.preventDefault();
  const key = $("#task-search-input").value.trim();
  if (key) location.hash = `#/task/${encodeURIComponent(key)}`;
});

$("#vendor-missing").hidden = hasCharts();
window.addEventListener("hashchange", route);
window.shoalStore = store; // for debugging and the end-to-end test
window.shoalStreamStats = status.streamStats;
route();
connect();
