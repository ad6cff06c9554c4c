// Workers view: one table row per worker.
import { $, esc, fmtBytes, fmtNum } from "./util.js";
import { store } from "./store.js";
import { workerMemory } from "./memory.js";

export function render() {
  const ws = [...store.workers.values()].sort((a, b) => a.name.localeCompare(b.name));
  const now = store.time / 1e9 || Date.now() / 1e3;
  $("#workers-table tbody").innerHTML = ws.map((w) => {
    // managed bytes come from the scheduler's own record (current); the heartbeat's figure
    // lags by up to a second, so a short graph's results never showed in it
    const m = workerMemory(w), used = m.managed + m.unmanaged;
    const pct = m.limit ? Math.min(100, (100 * used) / m.limit) : 0;
    const ago = w.last_seen ? `${Math.max(0, now - w.last_seen).toFixed(1)} s ago` : "–";
    return `<tr data-address="${esc(w.address)}">
      <td>${esc(w.name)}</td><td class="mono">${esc(w.address)}</td>
      <td class="num">${w.nthreads}</td><td class="num">${w.executing}</td><td class="num">${fmtNum(w.processing)}</td>
      <td class="mem" data-managed="${m.managed}"><span class="membar"><span style="width:${pct}%"></span></span>${fmtBytes(used)} / ${fmtBytes(m.limit)}
        <span class="muted">(${fmtNum(w.keys || 0)} results)</span></td>
      <td class="num">${fmtBytes(w.spilled)}</td><td class="num">${(w.cpu ?? 0).toFixed(0)} %</td>
      <td class="num">${fmtBytes(w.bytes_sent)}</td><td class="num">${fmtBytes(w.bytes_received)}</td>
      <td>${ago}</td></tr>`;
  }).join("") || '<tr><td colspan="11" class="muted">No workers.</td></tr>';
}
