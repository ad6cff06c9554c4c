// Events view: workers joining and leaving (with the reason), errors and retries. The log is
// fetched from /api/v1/events when the view opens; later events arrive with the frames.
import { $, esc, fmtTime, taskLink, getJSON } from "./util.js";
import { store } from "./store.js";

let history = [], since = 0;

export async function show() {
  const r = await getJSON("api/v1/events?n=1000");
  if (!r.ok) return;
  history = r.body.events;
  since = history.length ? history[history.length - 1].time : 0;
  render();
}

export function render() {
  const live = store.cluster.filter((e) => e.time > since);
  const all = history.concat(live).reverse();
  const names = new Map([...store.workers.values()].map((w) => [w.address, w.name]));
  $("#events-table tbody").innerHTML = all.map((e) => {
    const who = e.worker ? `${esc(e.name || names.get(e.worker) || "")} <span class="mono muted">${esc(e.worker)}</span>` : "";
    const detail = e.kind === "retry" ? `attempt ${e.attempt}` : esc(e.reason || "");
    return `<tr class="ev-${esc(e.kind)}"><td>${fmtTime(e.time)}</td><td>${esc(e.kind)}</td><td>${who}</td>
      <td>${e.key ? taskLink(e.key) : ""}</td><td>${detail}</td></tr>`;
  }).join("") || '<tr><td colspan="5" class="muted">No events yet.</td></tr>';
}
