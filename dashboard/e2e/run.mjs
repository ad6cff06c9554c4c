// End-to-end test of the dashboard in a real browser (Debian's Chromium via puppeteer-core),
// against a real local cluster:
//
//   SHOAL_BIN=/work/main/bin/shoal PYTHON=/work/main/.venv/bin/python node e2e/run.mjs
//
// It starts `shoal local --workers N --dashboard-port P`, opens the dashboard and asserts that
//   - the workers table lists every worker the API reports (and N of them);
//   - the demo graph (`shoal demo`, ~2,000 tasks in about a second) completes in the progress
//     bars and the task stream then covers every one of its tasks (one by one or in spans);
//   - during a ~30-second graph of Python tasks (e2e/workload.py, run inside
//     shoal.performance_report) and after it, the task stream covers at least as many tasks as
//     the scheduler completed in the stream's window;
//   - the per-worker memory bars move when the graph holds its results, and go back when it
//     releases them;
//   - the profiler's flame graph appears for the Python task group, with the task's own
//     function in it;
//   - the report file performance_report wrote renders in Chromium with the network off and
//     shows the task stream with every task of the graph;
//   - the page raised no JavaScript error.
// Screenshots of each view go to e2e/artifacts/ (gitignored) with a log. Exit status 0 = pass.
//
// Environment: SHOAL_BIN, PYTHON (python with shoal installed), E2E_WORKERS (2),
// E2E_TASKS (2000), E2E_SECONDS (30), E2E_TIMEOUT_MS (180000), CHROMIUM (/usr/bin/chromium).
import { spawn } from "node:child_process";
import { existsSync, mkdirSync, writeFileSync } from "node:fs";
import { createServer } from "node:net";
import { dirname, join, resolve } from "node:path";
import { fileURLToPath, pathToFileURL } from "node:url";
import { launch } from "./browser.mjs";

const here = dirname(fileURLToPath(import.meta.url));
const repo = resolve(here, "..", "..");
const artifacts = join(here, "artifacts");
const workers = Number(process.env.E2E_WORKERS || 2);
const tasks = Number(process.env.E2E_TASKS || 2000);
const seconds = Number(process.env.E2E_SECONDS || 30);
const timeoutMs = Number(process.env.E2E_TIMEOUT_MS || 180000);
const python = process.env.PYTHON || join(repo, ".venv", "bin", "python");
const children = [];
const log = [];

function note(msg) {
  const line = `[e2e ${new Date().toISOString()}] ${msg}`;
  log.push(line);
  console.log(line);
}

function freePort() {
  return new Promise((resolve, reject) => {
    const s = createServer();
    s.once("error", reject);
    s.listen(0, "127.0.0.1", () => { const { port } = s.address(); s.close(() => resolve(port)); });
  });
}

// start runs a command and resolves with the process once its output matches every regexp in
// wants; the resolved value has the first capture group of each.
function start(cmd, args, wants, env = {}) {
  return new Promise((resolve, reject) => {
    note(`start: ${cmd} ${args.join(" ")}`);
    const p = spawn(cmd, args, { env: { ...process.env, ...env }, stdio: ["pipe", "pipe", "pipe"] });
    children.push(p);
    let out = "";
    const found = () => wants.map((re) => out.match(re)?.[1]);
    const onData = (d) => {
      out += d;
      for (const l of String(d).split("\n")) if (l.trim()) log.push(`  ${cmd.split("/").pop()}: ${l}`);
      const got = found();
      if (got.every(Boolean)) resolve({ proc: p, got, output: () => out });
    };
    p.stdout.on("data", onData);
    p.stderr.on("data", onData);
    p.on("exit", (code) => reject(new Error(`${cmd} exited with ${code} before printing what was expected:\n${out}`)));
    setTimeout(() => reject(new Error(`${cmd} did not print ${wants.join(", ")} in 60 s:\n${out}`)), 60000).unref();
  });
}

function run(cmd, args) {
  return new Promise((resolve, reject) => {
    note(`run: ${cmd} ${args.join(" ")}`);
    const p = spawn(cmd, args, { stdio: ["ignore", "pipe", "pipe"] });
    children.push(p);
    let out = "";
    p.stdout.on("data", (d) => { out += d; });
    p.stderr.on("data", (d) => { out += d; });
    p.on("exit", (code) => (code === 0 ? resolve(out) : reject(new Error(`${cmd} ${args.join(" ")} exited with ${code}:\n${out}`))));
  });
}

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

// pageJSON fetches url from the page, retrying a few times: Chromium aborts requests in flight
// with ERR_NETWORK_CHANGED when the host's interfaces change (other tests make network
// namespaces on this machine), which says nothing about the dashboard.
function pageJSON(page, url) {
  return page.evaluate(async (u) => {
    let err;
    for (let i = 0; i < 10; i++) {
      try {
        return await (await fetch(u, { cache: "no-store" })).json();
      } catch (e) {
        err = e;
        await new Promise((r) => setTimeout(r, 200));
      }
    }
    throw err;
  }, url);
}

async function until(what, fn, ms = timeoutMs) {
  const deadline = Date.now() + ms;
  for (;;) {
    const v = await fn();
    if (v) return v;
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await sleep(200);
  }
}

// coverage reads, in one evaluation, what the task stream drew in its window and how many tasks
// the scheduler completed since the window began (from the page's own series of snapshots). The
// count starts at the first snapshot a second into the window: a task the scheduler counted
// after that ended (on its worker's clock) within the window, even if its report took a while.
function coverage(page) {
  return page.evaluate(() => {
    const st = window.shoalStreamStats, s = window.shoalStore;
    const first = s.series.find((p) => p.t >= st.from + 1000);
    const completed = st.completed; // as of the frame the stream drew, not a newer one
    return { drawn: st.drawn, covered: st.tasks, ran: completed - (first ? first.completed : completed), completed,
      lost: s.lost, aggregated: s.aggregated, framesDropped: s.dropped };
  });
}

async function assertCoverage(page, when) {
  await sleep(300); // two frames: the status view rendered what the store holds
  const c = await coverage(page);
  note(`task stream ${when}: drew ${c.drawn} items covering ${c.covered} tasks; ${c.ran} tasks ran in its window (${c.aggregated} arrived in spans, ${c.lost} lost, ${c.framesDropped} frames dropped)`);
  if (c.covered < c.ran) {
    const from = await page.evaluate(() => Math.round(window.shoalStreamStats.from * 1e6));
    const rec = await pageJSON(page, `api/v1/task-stream?start=${from}`);
    const why = await page.evaluate(async (rec) => {
      const s = window.shoalStore;
      const have = new Set(s.stream.filter((e) => e.key).map((e) => e.key));
      const missing = rec.tasks.filter((t) => !have.has(t.key)).slice(0, 10);
      return { recorded: rec.tasks.length, spans: s.stream.filter((e) => e.count).length, missing,
        workers: [...s.workers.values()].map((w) => [w.address, w.nthreads]) };
    }, rec);
    note(`diagnosis: ${JSON.stringify(why)}`);
    throw new Error(`task stream ${when} covers ${c.covered} tasks, but ${c.ran} ran in its window`);
  }
  if (c.ran === 0) throw new Error(`task stream ${when}: no task ran in the window (the check would be empty)`);
  return c;
}

const memoryBars = (page) => page.$$eval("#worker-memory .wmem", (els) => els.map((e) => ({
  address: e.dataset.address, managed: +e.dataset.managed,
  width: parseFloat(e.querySelector(".managed")?.style.width || "0"),
})));

async function main() {
  mkdirSync(artifacts, { recursive: true });
  const bin = process.env.SHOAL_BIN;
  if (!bin) throw new Error("set SHOAL_BIN to the shoal binary (make dashboard-e2e does)");
  const port = await freePort();
  const { got } = await start(bin, ["local", "--workers", String(workers), "--port", "0", "--gossip-port", "0", "--dashboard-port", String(port),
    "--python", python], [
    /(https?:\/\/[^\s"']+)/,
    /scheduler[^\n]*?((?:\d{1,3}\.){3}\d{1,3}:\d+)/i,
  ]);
  const [url, scheduler] = got;
  note(`cluster: dashboard ${url}, scheduler ${scheduler}`);
  const { browser, close } = await launch();
  const errors = [];
  try {
    const page = await browser.newPage();
    page.on("pageerror", (e) => { errors.push(e.message); note(`pageerror: ${e.message}`); });
    page.on("console", (m) => { if (m.type() === "error") note(`console error: ${m.text()}`); });
    page.on("requestfailed", (r) => note(`request failed: ${r.url()} ${r.failure()?.errorText}`));
    await page.setViewport({ width: 1400, height: 1100 });
    const base = url.replace(/#.*$/, "").replace(/\/?$/, "/");
    await page.goto(base + "#/status", { waitUntil: "load" });
    await until("the websocket to connect", () => page.$eval("#conn", (e) => e.textContent === "live"));

    // Workers: the table lists every worker the scheduler knows.
    await page.goto(base + "#/workers");
    const apiWorkers = await until(`${workers} workers in /api/v1/workers`, async () => {
      const ws = (await pageJSON(page, "api/v1/workers")).workers || [];
      return ws.length >= workers && ws;
    });
    const rows = await until("the workers table to list every worker", async () => {
      const got = await page.$$eval("#workers-table tbody tr[data-address]", (trs) => trs.map((t) => t.dataset.address));
      return apiWorkers.every((w) => got.includes(w.address)) && got;
    });
    if (rows.length !== workers) throw new Error(`workers table has ${rows.length} rows, want ${workers}`);
    note(`workers table lists ${rows.join(", ")}`);
    await page.screenshot({ path: join(artifacts, "workers.png"), fullPage: true });

    // Status: the demo graph (~2,000 tasks in about a second) completes, and the task stream
    // then covers all of it.
    await page.goto(base + "#/status");
    await sleep(500);
    const before = (await coverage(page)).completed;
    const seen = new Map();
    let demoDone = false, demoErr = null;
    run(bin, ["demo", "--scheduler", scheduler, "--tasks", String(tasks)]).then(() => { demoDone = true; }, (e) => { demoErr = e; });
    await until("every task group to complete", async () => {
      if (demoErr) throw demoErr;
      const groups = await page.$$eval("#progress .group", (gs) => gs.map((g) => ({ name: g.dataset.name, total: +g.dataset.total, done: +g.dataset.done })));
      for (const g of groups) {
        const s = seen.get(g.name) || { total: 0, done: 0 };
        seen.set(g.name, { total: Math.max(s.total, g.total), done: Math.max(s.done, g.done) });
      }
      return seen.size > 0 && [...seen.values()].every((s) => s.total > 0 && s.done >= s.total) && demoDone;
    });
    const total = [...seen.values()].reduce((a, s) => a + s.total, 0);
    note(`progress complete: ${seen.size} groups, ${total} tasks`);
    if (total < tasks) throw new Error(`progress showed ${total} tasks, want at least ${tasks}`);
    const demo = await assertCoverage(page, "after the demo graph");
    if (demo.covered < demo.completed - before) throw new Error(`the stream covers ${demo.covered} of the demo's ${demo.completed - before} tasks`);
    const badge = await page.$eval("#source-dropped", (e) => (e.hidden ? "" : e.textContent));
    if (badge) throw new Error(`the header shows "${badge}" although nothing was lost`);
    await page.screenshot({ path: join(artifacts, "status-demo.png"), fullPage: true });

    // A ~30-second graph of Python tasks inside performance_report, results held.
    const memBefore = await memoryBars(page);
    const report = join(artifacts, "report.html");
    const wl = await start(python, [join(here, "workload.py"), scheduler, report, String(seconds)], [/(STARTED)/, /KEYS (\d+)/]);
    const nkeys = Number(wl.got[1]);
    note(`workload: ${nkeys} Python tasks of ~40 ms`);
    const t0 = Date.now();
    await sleep(Math.min(seconds * 1000 * 0.4, 15000));
    await assertCoverage(page, "during the 30-second graph");
    await page.screenshot({ path: join(artifacts, "status-during.png"), fullPage: true });
    // a running task's page, with its call stacks when the profiler runs
    const gs = (await pageJSON(page, "api/v1/groups")).groups || [];
    const running = gs.find((g) => g.name === "busy" && g.processing > 0) ? "busy" : "";
    if (running) {
      const key = await page.evaluate(() => window.shoalStore.stream.filter((e) => e.key?.startsWith("busy-")).map((e) => +e.key.slice(5)).reduce((a, b) => Math.max(a, b), 0));
      await page.goto(base + `#/task/${encodeURIComponent(`busy-${key + 8}`)}`);
      await sleep(1500);
      await page.screenshot({ path: join(artifacts, "task-running.png"), fullPage: true });
      await page.goto(base + "#/status");
    }
    await sleep(Math.min(seconds * 1000 * 0.3, 10000));
    await assertCoverage(page, "later during the graph");

    await until("the workload to hold its results", async () => /HELD/.test(wl.output()), seconds * 1000 * 4 + 60000);
    note(`graph done in ${((Date.now() - t0) / 1000).toFixed(1)} s`);
    await assertCoverage(page, "after the 30-second graph");

    // Memory bars: the held results show, per worker.
    const held = await until("the memory bars to show the held results", async () => {
      const bars = await memoryBars(page);
      return bars.length === workers && bars.every((b) => b.managed > 0 && b.width > 0) && bars;
    }, 15000);
    note(`memory bars before ${JSON.stringify(memBefore)}, holding ${JSON.stringify(held)}`);
    if (held.reduce((a, b) => a + b.managed, 0) < nkeys * (64 << 10)) throw new Error("the bars show less than the held results");
    await page.screenshot({ path: join(artifacts, "status-memory.png"), fullPage: true });

    // Profile: a flame graph for the Python task group.
    await page.goto(base + "#/profile/busy");
    const frames = await until("a flame graph of the busy group", async () => {
      const n = await page.$$eval("#flame .frame", (fs) => fs.map((f) => f.dataset.name));
      return n.length > 1 && n.some((name) => name.startsWith("spin")) && n;
    }, 20000);
    note(`flame graph of busy: ${frames.length} frames, e.g. ${frames.slice(0, 4).join(" | ")}`);
    await page.screenshot({ path: join(artifacts, "profile.png"), fullPage: true });

    // Release: the bars go back.
    wl.proc.stdin.write("release\n");
    await until("the workload to release", async () => /RELEASED/.test(wl.output()), 30000);
    await page.goto(base + "#/status");
    await until("the memory bars to drop", async () => (await memoryBars(page)).every((b) => b.managed === 0), 15000);
    note("memory bars back to 0 after the release");

    for (const v of ["graph", "events", "workers"]) {
      await page.goto(base + `#/${v}`);
      await sleep(1000);
      await page.screenshot({ path: join(artifacts, `${v}.png`), fullPage: true });
    }

    // The report renders offline: the network is off and every request but the file fails.
    if (!existsSync(report)) throw new Error("performance_report wrote no file");
    const off = await browser.newPage();
    off.on("pageerror", (e) => { errors.push(`report: ${e.message}`); note(`report pageerror: ${e.message}`); });
    await off.setViewport({ width: 1400, height: 1100 });
    await off.setOfflineMode(true);
    await off.setRequestInterception(true);
    const blocked = [];
    off.on("request", (r) => { if (r.url().startsWith("file:")) r.continue(); else { blocked.push(r.url()); r.abort(); } });
    await off.goto(pathToFileURL(report).href, { waitUntil: "load" });
    await until("the report to render", () => off.$eval("body", (b) => b.dataset.rendered === "1"), 10000);
    const drawn = await off.$eval("#stream", (c) => +c.dataset.tasks);
    note(`report: ${drawn} tasks drawn offline, ${blocked.length} outside requests`);
    if (blocked.length) throw new Error(`the report asked for ${blocked.join(", ")}`);
    if (drawn < nkeys) throw new Error(`the report's task stream drew ${drawn} tasks, want ${nkeys}`);
    await off.screenshot({ path: join(artifacts, "report.png"), fullPage: true });
    if (errors.length) throw new Error(`JavaScript errors on the page:\n${errors.join("\n")}`);
    note("PASS");
  } finally {
    await close();
  }
}

let code = 0;
try {
  await main();
} catch (e) {
  note(`FAIL: ${e.stack || e}`);
  code = 1;
} finally {
  for (const p of children) if (p.exitCode === null) p.kill("SIGTERM");
  mkdirSync(artifacts, { recursive: true });
  writeFileSync(join(artifacts, "e2e.log"), log.join("\n") + "\n");
}
process.exit(code);
