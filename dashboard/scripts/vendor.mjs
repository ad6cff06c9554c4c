// Copies the chart library from node_modules into static/vendor/, where go:embed picks it up.
// Run after `npm ci` (make dashboard-build). static/vendor/ is gitignored; without it the page
// works but shows that its charts are missing.
import { copyFileSync, mkdirSync, existsSync } from "node:fs";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";

const root = join(dirname(fileURLToPath(import.meta.url)), "..");
const out = join(root, "static", "vendor");
const files = [
  ["node_modules/echarts/dist/echarts.min.js", "echarts.min.js"],
  ["node_modules/echarts/LICENSE", "echarts.LICENSE.txt"],
];

mkdirSync(out, { recursive: true });
for (const [from, to] of files) {
  const src = join(root, from);
  if (!existsSync(src)) {
    console.error(`vendor: ${from} is missing; run "npm ci" in dashboard/ first`);
    process.exit(1);
  }
  copyFileSync(src, join(out, to));
  console.log(`vendor: ${from} -> static/vendor/${to}`);
}
