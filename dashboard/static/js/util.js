// Small formatting and DOM helpers shared by the views.

export const $ = (sel) => document.querySelector(sel);

export function esc(s) {
  return String(s ?? "").replace(/[&<>"']/g, (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" })[c]);
}

export function fmtBytes(n) {
  if (!n) return "0 B";
  const units = ["B", "KiB", "MiB", "GiB", "TiB"];
  let i = 0;
  while (Math.abs(n) >= 1024 && i < units.length - 1) { n /= 1024; i++; }
  return `${n.toFixed(i === 0 ? 0 : 1)} ${units[i]}`;
}

export function fmtSeconds(s) {
  if (!isFinite(s)) return "–";
  if (s < 1e-3) return `${(s * 1e6).toFixed(0)} µs`;
  if (s < 1) return `${(s * 1e3).toFixed(1)} ms`;
  if (s < 120) return `${s.toFixed(2)} s`;
  return `${(s / 60).toFixed(1)} min`;
}

export function fmtNum(n) {
  return Number(n ?? 0).toLocaleString("en-US");
}

// Times on the wire are unix nanoseconds; the page works in milliseconds.
export const nsToMs = (ns) => ns / 1e6;

export function fmtTime(ns) {
  if (!ns) return "–";
  const d = new Date(nsToMs(ns));
  return d.toLocaleTimeString("en-GB", { hour12: false }) + "." + String(d.getMilliseconds()).padStart(3, "0");
}

// groupColor gives every task group a stable colour: groups get the palette's colours in the
// order the page first sees them, so the first fifteen groups never share one.
const palette = ["#5470c6", "#91cc75", "#fac858", "#73c0de", "#3ba272", "#fc8452",
  "#9a60b4", "#ea7ccc", "#2f4554", "#61a0a8", "#d48265", "#749f83", "#ca8622", "#bda29a"];
const assigned = new Map();
export function groupColor(name) {
  let c = assigned.get(name);
  if (!c) {
    c = palette[assigned.size % palette.length];
    assigned.set(name, c);
  }
  return c;
}

export const hasCharts = () => typeof window.echarts !== "undefined";

// chartIn returns an echarts instance for el, or null (with a note in el) when the library
// is missing.
export function chartIn(el) {
  if (!hasCharts()) {
    el.innerHTML = '<div class="nochart">Chart unavailable: the chart library was not built into this binary.</div>';
    return null;
  }
  const c = window.echarts.init(el);
  new ResizeObserver(() => c.resize()).observe(el);
  return c;
}

export function taskLink(key) {
  return `<a class="mono" href="#/task/${encodeURIComponent(key)}">${esc(key)}</a>`;
}

// getJSON never throws: a network failure is an answer with status 0.
export async function getJSON(url) {
  let r;
  try {
    r = await fetch(url, { cache: "no-store" });
  } catch (e) {
    return { ok: false, status: 0, body: { error: `network: ${e.message}` } };
  }
  const body = await r.json().catch(() => ({ error: `HTTP ${r.status}` }));
  return { ok: r.ok, status: r.status, body };
}
