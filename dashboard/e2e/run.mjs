// End-to-end test of the dashboard in a real browser (Debian's Chromium via puppeteer-core).
//
//   SHOAL_BIN=/work/main/bin/shoal node e2e/run.mjs   # a real local cluster
//
// With SHOAL_BIN it starts `shoal local --workers N --dashboard-port P`, opens the dashboard,
// submits a graph with `shoal demo --scheduler ADDR --tasks T`, and asserts that
//   - the workers table lists every worker the API reports (and N of them),
//   - the progress bars reach completion (every task group seen reaches done == total),
//   - the page raised no JavaScript error.
// Screenshots go to e2e/artifacts/ (gitignored). Exit status 0 means pass.
//
// Environment: SHOAL_BIN, E2E_WORKERS (2), E2E_TASKS (2000), E2E_TIMEOUT_MS (120000),
// CHROMIUM (/usr/bin/chromium).
import { spawn } from "node:child_process";
import { mkdirSync, writeFileSync } from "node:fs";
import { createServer } from "node:net";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
import { launch } from "./browser.mjs";

const here = dirname(fileURLToPath(import.meta.url));
const artifacts = join(here, "artifacts");
const workers = Number(process.env.E2E_WORKERS || 2);
const tasks = Number(process.env.E2E_TASKS || 2000);
const timeoutMs = Number(process.env.E2E_TIMEOUT_MS || 120000);
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
    const p = spawn(cmd, args, { env: { ...process.env, ...env }, stdio: ["ignore", "pipe", "pipe"] });
    children.push(p);
    let out = "";
    const found = () => wants.map((re) => out.match(re)?.[1]);
    const onData = (d) => {
      out += d;
      for (const l of String(d).split("\n")) if (l.trim()) log.push(`  ${cmd.split("/").pop()}: ${l}`);
      const got = found();
      if (got.every(Boolean)) resolve({ proc: p, got });
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

async function startCluster() {
  const port = await freePort();
  if (process.env.SHOAL_BIN) {
    const bin = process.env.SHOAL_BIN;
    const { got } = await start(bin, ["local", "--workers", String(workers), "--port", "0", "--gossip-port", "0", "--dashboard-port", String(port)], [
      /(https?:\/\/[^\s"']+)/,
      /scheduler[^\n]*?((?:\d{1,3}\.){3}\d{1,3}:\d+)/i,
    ]);
    const [url, scheduler] = got;
    note(`cluster: dashboard ${url}, scheduler ${scheduler}`);
    return { url, expectWorkers: workers, submit: () => run(bin, ["demo", "--scheduler", scheduler, "--tasks", String(tasks)]) };
  }
  throw new Error("set SHOAL_BIN to the shoal binary (make dashboard-e2e does)");
}

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

async function until(what, fn) {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const v = await fn();
    if (v) return v;
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await sleep(200);
  }
}

async function main() {
  mkdirSync(artifacts, { recursive: true });
  const cluster = await startCluster();
  const { browser, close } = await launch();
  const errors = [];
  try {
    const page = await browser.newPage();
    page.on("pageerror", (e) => { errors.push(e.message); note(`pageerror: ${e.message}`); });
    page.on("console", (m) => { if (m.type() === "error") note(`console error: ${m.text()}`); });
    await page.setViewport({ width: 1400, height: 1000 });
    const base = cluster.url.replace(/#.*$/, "").replace(/\/?$/, "/");
    await page.goto(base + "#/status", { waitUntil: "load" });
    await until("the websocket to connect", () => page.$eval("#conn", (e) => e.textContent === "live"));

    // Workers: the table lists every worker the scheduler knows.
    await page.goto(base + "#/workers");
    const apiWorkers = await until(`${cluster.expectWorkers} workers in /api/v1/workers`, async () => {
      const ws = (await page.evaluate(async () => (await (await fetch("api/v1/workers")).json()).workers)) || [];
      return ws.length >= cluster.expectWorkers && ws;
    });
    const rows = await until("the workers table to list every worker", async () => {
      const got = await page.$$eval("#workers-table tbody tr[data-address]", (trs) => trs.map((t) => t.dataset.address));
      return apiWorkers.every((w) => got.includes(w.address)) && got;
    });
    if (rows.length !== cluster.expectWorkers) throw new Error(`workers table has ${rows.length} rows, want ${cluster.expectWorkers}`);
    note(`workers table lists ${rows.join(", ")}`);
    await page.screenshot({ path: join(artifacts, "workers.png"), fullPage: true });

    // Status: submit a graph and watch the progress bars reach completion.
    await page.goto(base + "#/status");
    const submitted = cluster.submit();
    let submitDone = false, submitErr = null;
    submitted.then(() => { submitDone = true; note("graph submitted and finished"); }, (e) => { submitErr = e; });
    const seen = new Map(); // group -> {total, done (max seen)}
    await until("every task group to complete", async () => {
      if (submitErr) throw submitErr;
      const groups = await page.$$eval("#progress .group", (gs) => gs.map((g) => ({ name: g.dataset.name, total: +g.dataset.total, done: +g.dataset.done })));
      for (const g of groups) {
        const s = seen.get(g.name) || { total: 0, done: 0 };
        seen.set(g.name, { total: Math.max(s.total, g.total), done: Math.max(s.done, g.done) });
      }
      const complete = seen.size > 0 && [...seen.values()].every((s) => s.total > 0 && s.done >= s.total);
      return complete && submitDone;
    });
    const total = [...seen.values()].reduce((a, s) => a + s.total, 0);
    note(`progress complete: ${seen.size} groups, ${total} tasks`);
    if (process.env.SHOAL_BIN && total < tasks) throw new Error(`progress showed ${total} tasks, want at least ${tasks}`);
    await sleep(500);
    await page.screenshot({ path: join(artifacts, "status.png"), fullPage: true });
    for (const v of ["graph", "events"]) {
      await page.goto(base + `#/${v}`);
      await sleep(1000);
      await page.screenshot({ path: join(artifacts, `${v}.png`), fullPage: true });
    }
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
