// Profile view: the statistical profiler's flame graph for the whole cluster or one task group,
// from /api/v1/profile, refreshed every 2 s while shown; a switch turns the profiler on and off
// (POST /api/v1/profile?on=1|0; it samples running tasks every ~10 ms and costs nothing while
// off). A report of any watched window can be downloaded from here too.
import { $, esc, getJSON } from "./util.js";
import { drawFlame, flameNote } from "./flame.js";

let timer = null, group = "";

export function show(arg) {
  group = arg || "";
  load();
}

export function hide() { clearTimeout(timer); }

async function load() {
  clearTimeout(timer);
  const r = await getJSON("api/v1/profile");
  timer = setTimeout(load, 2000);
  if (!r.ok) { $("#profile-status").textContent = r.body.error || "unavailable"; return; }
  const p = r.body;
  const names = Object.keys(p.groups || {}).sort();
  const sel = $("#profile-group");
  const opts = `<option value="">whole cluster</option>` + names.map((n) => `<option value="${esc(n)}">${esc(n)}</option>`).join("");
  if (sel.dataset.opts !== opts) { sel.innerHTML = opts; sel.dataset.opts = opts; }
  sel.value = names.includes(group) ? group : "";
  $("#profile-toggle").textContent = p.enabled ? "Stop profiler" : "Start profiler";
  $("#profile-toggle").dataset.on = p.enabled ? "1" : "0";
  const root = group && p.groups[group] ? p.groups[group] : p.cluster;
  const box = $("#flame");
  const n = drawFlame(box, root);
  box.dataset.group = group;
  box.dataset.frames = n;
  $("#profile-status").textContent = n ? `${root.count.toLocaleString("en-US")} samples · ${flameNote(p)}`
    : `No samples yet · ${flameNote(p)}. Start the profiler and run Python or Go tasks.`;
}

$("#profile-group").addEventListener("change", (ev) => {
  location.hash = ev.target.value ? `#/profile/${encodeURIComponent(ev.target.value)}` : "#/profile";
});
$("#profile-toggle").addEventListener("click", async (ev) => {
  const on = ev.target.dataset.on !== "1";
  await fetch(`api/v1/profile?on=${on ? 1 : 0}`, { method: "POST" }).catch(() => {});
  load();
});
$("#report-download").addEventListener("click", () => {
  const secs = Number($("#report-window").value) || 300;
  location.href = `api/v1/report?last=${secs}&download=1`;
});
