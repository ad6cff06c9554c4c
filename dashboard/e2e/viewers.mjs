// Measurement, not a test: the scheduler's cost of real dashboards. Starts `shoal local`, then
// runs `shoal demo --tasks N` (a sum tree of N no-op Go tasks and an Arrow pipeline) with 0 and
// with 3 Chromium pages on the status view, alternated (0, 3, 3, 0, ...), and prints each run's
// wall time and the scheduler process's CPU time (utime+stime from /proc; the workers are other
// processes). Browsers share this machine's cores with the cluster, so wall time includes their
// rendering; the scheduler's CPU time is what the dashboard costs the scheduler.
//
//   SHOAL_BIN=bin/shoal node e2e/viewers.mjs [TASKS=100000] [PAIRS=3]
import { spawn, execFileSync } from "node:child_process";
import { readFileSync } from "node:fs";
import { launch } from "./browser.mjs";

const bin = process.env.SHOAL_BIN;
const tasks = Number(process.argv[2] || 100000), pairs = Number(process.argv[3] || 3);
const only = process.env.ONLY_VIEWERS; // "3": run only with 3 dashboards (for a profile)
const tick = Number(execFileSync("getconf", ["CLK_TCK"]).toString().trim());
const cpu = (pid) => { const f = readFileSync(`/proc/${pid}/stat`, "utf8").split(") ")[1].split(" "); return (Number(f[11]) + Number(f[12])) / tick; };

const extra = process.env.LOCAL_ARGS ? process.env.LOCAL_ARGS.split(" ") : []; // e.g. --cpu-profile /tmp/s.pprof
const local = spawn(bin, ["local", "--workers", "2", "--port", "0", "--gossip-port", "0", "--dashboard-port", "0", ...extra], { stdio: ["ignore", "pipe", "pipe"] });
let out = "";
const ready = new Promise((resolve) => {
  const on = (d) => { out += d; const u = out.match(/dashboard at (http\S+)/), s = out.match(/scheduler at ([\d.]+:\d+)/); if (u && s) resolve([u[1], s[1]]); };
  local.stdout.on("data", on); local.stderr.on("data", on);
});
const [url, sched] = await ready;
const { browser, close } = await launch();
const runDemo = () => new Promise((resolve, reject) => {
  const p = spawn(bin, ["demo", "--scheduler", sched, "--tasks", String(tasks)], { stdio: "ignore" });
  p.on("exit", (c) => (c === 0 ? resolve() : reject(new Error(`demo exited ${c}`))));
});
const res = { 0: [], 3: [] };
try {
  await runDemo(); // warm up
  for (const n of Array.from({ length: pairs }, () => [0, 3, 3, 0]).flat().slice(0, 2 * pairs).filter((n) => !only || String(n) === only)) {
    const pages = [];
    for (let i = 0; i < n; i++) {
      const p = await browser.newPage();
      await p.setViewport({ width: 1400, height: 1000 });
      await p.goto(url + "#/status", { waitUntil: "load" });
      pages.push(p);
    }
    await new Promise((r) => setTimeout(r, 1000));
    const c0 = cpu(local.pid), t0 = performance.now();
    await runDemo();
    const wall = (performance.now() - t0) / 1000, c = cpu(local.pid) - c0;
    res[n].push({ wall, cpu: c });
    console.log(`${n} dashboards: ${wall.toFixed(2)} s wall, scheduler CPU ${c.toFixed(2)} s (${((c / tasks) * 1e6).toFixed(2)} µs/task)`);
    for (const p of pages) await p.close();
  }
  const med = (xs) => xs.slice().sort((a, b) => a - b)[xs.length >> 1];
  for (const k of ["wall", "cpu"]) {
    const a = med(res[0].map((r) => r[k])), b = med(res[3].map((r) => r[k]));
    console.log(`median ${k}: 0 dashboards ${a.toFixed(2)} s, 3 dashboards ${b.toFixed(2)} s (${(100 * (b - a) / a).toFixed(1)} %)`);
  }
} finally {
  await close();
  local.kill("SIGTERM");
  await new Promise((r) => local.on("exit", r));
}
