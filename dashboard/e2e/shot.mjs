// Development helper: node e2e/shot.mjs URL OUT.png [WAIT_MS] — screenshot of a dashboard page.
import { launch } from "./browser.mjs";

const [url, out, wait = "3000"] = process.argv.slice(2);
const { browser, close } = await launch();
try {
  const page = await browser.newPage();
  page.on("console", (m) => console.log("console:", m.type(), m.text()));
  page.on("pageerror", (e) => console.log("pageerror:", e.message));
  await page.setViewport({ width: 1400, height: 1000 });
  await page.goto(url, { waitUntil: "load" });
  await new Promise((r) => setTimeout(r, Number(wait)));
  await page.screenshot({ path: out, fullPage: true });
  console.log("saved", out);
} finally {
  await close();
}
