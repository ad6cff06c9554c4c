// Flame graph (an icicle: outermost frames on top) of a profile node {name, count, children},
// drawn with absolutely positioned divs so it needs no chart library. Each frame's div carries
// data-name and data-count (read by the browser test).
import { esc } from "./util.js";

export function drawFlame(box, root, { onTitle } = {}) {
  box.innerHTML = "";
  if (!root || !root.count) return 0;
  const W = Math.max(box.clientWidth - 4, 200);
  let depth = 0, frames = 0;
  const walk = (n, x, w, d) => {
    if (w < 1) return;
    depth = Math.max(depth, d);
    frames++;
    const el = document.createElement("div");
    el.className = "frame";
    el.textContent = n.name;
    el.dataset.name = n.name;
    el.dataset.count = n.count;
    el.style.left = `${x}px`; el.style.top = `${d * 18}px`; el.style.width = `${w}px`;
    el.style.background = d === 0 ? "#c9ced6" : `hsl(${(hash(n.name) % 50) + 10}, 85%, ${62 + (d % 3) * 5}%)`;
    el.title = `${n.name}\n${n.count} samples (${((100 * n.count) / root.count).toFixed(1)} %)`;
    box.appendChild(el);
    let cx = x;
    for (const c of n.children || []) {
      const cw = (w * c.count) / n.count;
      walk(c, cx, cw, d + 1);
      cx += cw;
    }
  };
  walk(root, 0, W, 0);
  box.style.height = `${(depth + 1) * 18 + 4}px`;
  if (onTitle) onTitle(`${root.count.toLocaleString("en-US")} samples`);
  return frames;
}

function hash(s) {
  let h = 0;
  for (let i = 0; i < s.length; i++) h = (h * 31 + s.charCodeAt(i)) | 0;
  return Math.abs(h);
}

export const flameNote = (p) => (p.enabled ? "profiler on" : "profiler off") + (p.dropped ? ` · ${p.dropped} samples dropped (too many distinct stacks)` : "");
export { esc };
